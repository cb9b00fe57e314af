"""Operational one-shot tasks the chart runs as Jobs and init containers (bucket, database schema)."""
