"""Prefect flows, one per dvc.yaml stage, plus the pipeline that chains them."""

from flows.server import configure_prefect

configure_prefect()
