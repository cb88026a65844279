"""Evaluation: accuracy with 95% CIs, adaptation curves, trained runs loaded back, lambda = 0 twins."""
