"""Metrics, scoring of every checkpoint kind, and predictions."""
