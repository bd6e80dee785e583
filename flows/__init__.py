"""Prefect flows wiring the cached tasks together."""
