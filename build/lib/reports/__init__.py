"""Comparison reports of searches logged to MLflow."""
