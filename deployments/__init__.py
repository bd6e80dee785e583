"""Served Prefect deployments of ptqflow's flows (installed as ``ptqflow.deployments``)."""
