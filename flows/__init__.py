"""Prefect flows, one per dvc.yaml stage, plus the pipeline that chains them."""

from flows._stage_host import hand_over_to_stage_host

hand_over_to_stage_host()  # first: a stage that a warm host runs needs none of what follows

from flows.server import configure_prefect  # noqa: E402

configure_prefect()
