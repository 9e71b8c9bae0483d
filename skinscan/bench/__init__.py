"""Benchmarks (not tests): each prints a table and the ratios measured in the same run, and writes JSON."""
