"""Correlation ids, JSON logs, traces and metrics, and the redaction that keeps secrets out."""
