"""Prefect flows, one per dvc.yaml stage, plus the pipeline that chains them."""

from flows._runtime import configure_prefect

configure_prefect()
