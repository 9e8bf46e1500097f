"""Downstream anomaly detectors (placeholder during the move)."""
