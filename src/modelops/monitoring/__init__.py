"""Monitoring of served data: drift."""
