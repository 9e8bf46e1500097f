"""adqc: streaming visual quality control with ADPretrain anomaly representations."""
