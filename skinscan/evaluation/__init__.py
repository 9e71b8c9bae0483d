"""Evaluation: the study's metrics, the ISIC metric, two passes, leakage guards and plots."""
