"""The local platform: MLflow and the model server as supervised local processes (`modelops up`)."""
