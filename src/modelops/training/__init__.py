"""Training: datasets, fitting and evaluation (pure), publishing to MLflow (log, register, promote)."""
