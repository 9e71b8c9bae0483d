"""Evaluation: the one metrics module, classifier and segmenter evaluation (two passes, the ISIC metric with the
official scorer, leakage guard), the localisation check of explanations, plots; `evaluation.run.run(cfg)`."""
