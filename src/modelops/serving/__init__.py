"""The model server: follows a registry alias and serves predictions over HTTP."""
