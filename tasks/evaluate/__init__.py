"""Metrics, baselines, importance, figures and the report, from a trained bundle."""
