"""Stage `evaluate`: test metrics of the fused model and the single-modality baselines."""

from __future__ import annotations

import json

import pyarrow as pa
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from flows._entry import run_from_command_line
from tasks.assemble import load_feature_set
from tasks.atomic import write_json, write_parquet, write_text
from tasks.bundle import baseline_dirs, load_bundle
from tasks.config import load_params
from tasks.evaluation import metrics_report, plot_tables, predictions_table
from tasks.paths import Layout


@task(name="publish-metrics-artifact")
def publish_metrics(report: dict) -> None:
    """One row per model, so the Prefect UI shows fused vs baselines at a glance."""
    rows = [{"model": "fused", **report["test"]}]
    rows += [{"model": f"{m} only", **metrics} for m, metrics in report["baselines"].items()]
    create_table_artifact(
        key="fuseline-metrics",
        table=rows,
        description=f"Test metrics ({report['task']}; primary: {report['primary_metric']})",
    )


@flow(name="evaluate")
def evaluate(params_path: str = "params.yaml") -> dict:
    """Write reports/metrics.json, DVC plot data and test predictions."""
    params = load_params(params_path)
    layout = Layout()
    fused = load_bundle(layout.models)
    features = load_feature_set(layout, params.data.task, fused[1].classes or None)
    baselines = {m: load_bundle(path) for m, path in baseline_dirs(layout.models).items()}
    rows = {s: int((features.split == s).sum()) for s in ("train", "val", "test")}
    test = features.of_split("test")
    report, predictions = metrics_report(test, fused, baselines, rows)
    write_json(report, layout.metrics)
    for name, table in plot_tables(report["task"], test, predictions).items():
        write_text(table.to_csv(index=False), layout.plots / name)
    write_parquet(
        pa.Table.from_pandas(predictions_table(report["task"], test, predictions), preserve_index=False),
        layout.reports / "test_predictions.parquet",
    )
    publish_metrics(report)
    get_run_logger().info("metrics: %s", json.dumps({"test": report["test"], "baselines": report["baselines"]}))
    return report


if __name__ == "__main__":
    run_from_command_line(evaluate, "Evaluate the fused model against single-modality baselines.")
