"""Thin Prefect tasks around ptq_core steps, cached by the content hash of their inputs."""
