"""The whole pipeline as one Prefect flow: what a schedule runs.

Stages run as subflows so the Prefect UI shows one tree per run. `dvc repro` runs the same
stage flows one process each, adding DVC's skip-if-unchanged on top.
"""

from __future__ import annotations

from prefect import flow

from flows._entry import run_from_command_line
from flows.align import align_flow
from flows.demo import demo
from flows.evaluate import evaluate
from flows.extract import extract
from flows.ingest import ingest
from flows.train import train


@flow(name="fuseline-pipeline")
def pipeline(params_path: str = "params.yaml") -> dict:
    """demo data (if enabled) -> ingest -> align -> extract -> train -> evaluate."""
    demo(params_path)
    ingest(params_path)
    align_flow(params_path)
    extract(params_path)
    train(params_path)
    return evaluate(params_path)


if __name__ == "__main__":
    run_from_command_line(pipeline, "Run every stage of the fuseline pipeline.")
