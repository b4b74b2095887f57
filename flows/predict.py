"""Flow `predict`: a trained bundle (or the promoted one in a registry) on new raw rows.

Rows are cut into chunks of `cache.chunk_rows`; each chunk is an independent task that
encodes its rows (reading the row-level feature cache, committing what it encodes as new
shards) and predicts them, so `runtime.task_runner: dask | ray` spreads the work over a
cluster while `local` runs the same tasks here, one after another. Workers of a cluster
need the project installed and the input, images and cache directory at the same paths.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import torch
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from flows._commands import check_cluster, parse_roots, run_command
from flows._runtime import task_runner_for
from flows.scaleout import threads_per_task
from tasks import escape
from tasks.atomic import write_parquet
from tasks.config import CacheConfig, RuntimeConfig, load_params
from tasks.device import pick_device
from tasks.features.cache import FeatureCache
from tasks.pathcheck import check_input_path, check_output_path
from tasks.serve.predict import absolute_file_cells, cached_predictor, chunk_bounds, file_roots, read_new_rows
from tasks.serve.promotion import resolve_model_dir
from tasks.train.bundle import verify_bundle

PREDICTIONS_DIR = "predictions"  # where `fuseline predict` writes without --output


class ChunkJob(BaseModel):
    """What every chunk task shares: which bundle, which cache, where images are, how many threads."""

    bundle_dir: str
    bundle_mtime_ns: int
    cache_dir: str
    roots: dict[str, str]  # file modality -> absolute root
    threads: int  # torch intra-op threads; 0 leaves the worker's default


@task(name="predict-chunk", cache_policy=NO_CACHE)
def predict_chunk(chunk: ChunkJob, rows_file: str) -> str:
    """Encode and predict one chunk; writes <rows_file>.pred.parquet beside it and returns that path.

    Chunks travel as files, not task arguments, so a worker reads only its own rows and the
    results come back without passing through Prefect's parameter handling.
    """
    if chunk.threads > 0:
        torch.set_num_threads(chunk.threads)
    predictor = cached_predictor(chunk.bundle_dir, chunk.bundle_mtime_ns, chunk.cache_dir)
    roots = {name: Path(root) for name, root in chunk.roots.items()}
    rows = absolute_file_cells(pd.read_parquet(rows_file), predictor.data, roots)
    device = pick_device("auto")
    predictions = predictor.predict(rows, roots, FeatureCache(chunk.cache_dir), device)
    out = f"{rows_file}.pred.parquet"
    write_parquet(pa.Table.from_pandas(predictions, preserve_index=False), out)
    return out


@flow(name="predict-chunks")
def predict_chunks(chunk: ChunkJob, rows_files: list[str]) -> list[str]:
    """Every chunk on whichever task runner this subflow was given (see `predict`)."""
    futures = [predict_chunk.submit(chunk, path) for path in rows_files]
    return [future.result() for future in futures]


@flow(name="predict")
def predict(
    model: str = "models",
    input_path: str = "new.csv",
    output_path: str | None = None,
    params_path: str | None = "params.yaml",
    roots: dict[str, str] | None = None,
) -> dict:
    """Write `output_path` (<data.id>, prob_<class>..., prediction) for every row of `input_path`.

    The id column has the training data's id name and `prediction` the target's type there
    (tasks/serve/predict.served_table). Without `output_path`: predictions/<input stem>.parquet.

    `model` is a bundle directory (models/) or a registry (registry/: its current version).
    From `params_path` only `runtime` (where chunks run) and `cache` (the feature cache and
    chunk size) are read; everything about the data and encoders comes from the bundle. File
    paths (images, audio) are relative to the bundle's `data.<modality>_root` unless `roots`
    names another directory for that modality.
    """
    logger = get_run_logger()
    started = time.perf_counter()
    output_path = output_path or default_output_path(input_path)
    runtime, cache = _machine_settings(params_path)
    # Absolute paths: cluster workers need not share this process's working directory.
    bundle_dir = check_predict_paths(model, input_path, output_path, params_path)
    cache_dir = str(Path(cache.dir).resolve())
    mtime = _bundle_mtime_ns(bundle_dir)
    predictor = cached_predictor(bundle_dir, mtime, cache_dir)  # fails fast on a fingerprint mismatch
    file_roots_here = file_roots(predictor.data, roots)
    rows = read_new_rows(input_path, predictor.data, file_roots_here)
    bounds = chunk_bounds(len(rows), cache.chunk_rows)
    chunk = ChunkJob(
        bundle_dir=bundle_dir,
        bundle_mtime_ns=mtime,
        cache_dir=cache_dir,
        roots={name: str(root) for name, root in file_roots_here.items()},
        threads=threads_per_task(runtime),
    )
    out = Path(output_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".chunks", dir=out.parent))
    try:
        rows_files = []
        for i, (start, stop) in enumerate(bounds):
            path = work / f"chunk-{i:05d}.parquet"
            rows.iloc[start:stop].to_parquet(path, index=False)
            rows_files.append(str(path.resolve()))
        runner = task_runner_for(runtime.task_runner, runtime.address, runtime.workers)
        parts = predict_chunks.with_options(task_runner=runner)(chunk, rows_files)
        predictions = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_parquet(pa.Table.from_pandas(predictions, preserve_index=False), out)
    seconds = time.perf_counter() - started
    summary = {
        "rows": len(predictions),
        "chunks": len(bounds),
        "task_runner": runtime.task_runner,
        "model": bundle_dir,
        "output": str(out),
        "seconds": round(seconds, 2),
    }
    logger.info("predicted %d rows in %d chunks on %s in %.1f s -> %s", len(predictions), len(bounds),
                runtime.task_runner, seconds, out)  # fmt: skip
    _publish(summary, predictions)
    return summary


def default_output_path(input_path: str) -> str:
    """predictions/<input stem>.parquet under the working directory: one folder for every run's
    output, named after its input, rather than one fixed file that each run overwrites."""
    return str(Path(PREDICTIONS_DIR) / f"{Path(input_path).stem}.parquet")


def check_predict_paths(model: str, input_path: str, output_path: str, params_path: str | None) -> str:
    """Refuse an unusable model, input or output path before any work; the resolved bundle directory.

    The output must not be anything this run reads: the input, params.yaml, a file inside the
    model bundle or registry, or the feature cache (see tasks/pathcheck.py). `fuseline
    predict` calls this before starting the flow, so a refusal is one line and no flow run;
    the flow calls it again for callers that run it directly.
    """
    _, cache = _machine_settings(params_path)
    bundle_dir = resolve_model_dir(Path(model)).resolve()
    check_input_path(input_path)
    check_output_path(
        output_path,
        inputs=[path for path in (input_path, params_path) if path],
        protected_dirs=[model, bundle_dir, cache.dir],
    )
    return str(bundle_dir)


def _machine_settings(params_path: str | None) -> tuple[RuntimeConfig, CacheConfig]:
    """runtime and cache from the project's params.yaml; defaults when predicting outside a project."""
    if params_path and Path(params_path).exists():
        params = load_params(params_path)
        return params.runtime, params.cache
    return RuntimeConfig(), CacheConfig()


@task(name="publish-predictions", cache_policy=NO_CACHE)
def _publish(summary: dict, predictions: pd.DataFrame) -> None:
    """A summary artifact (from a task: Prefect 3.8 drops artifacts made in a flow body)."""
    counts = predictions["prediction"].value_counts().head(20) if len(predictions) else pd.Series(dtype=int)
    lines = [f"# Batch prediction: {summary['rows']} rows", ""]
    lines += [f"- {key}: {escape.code(value)}" for key, value in summary.items()]
    if not pd.api.types.is_float_dtype(predictions["prediction"]) and len(counts):  # classes
        rows = [f"| {escape.cell(escape.code(k))} | {v} |" for k, v in counts.items()]
        lines += ["", "| prediction | rows |", "|---|---|", *rows]
    create_markdown_artifact(
        markdown="\n".join(lines), key="fuseline-predictions", description="Batch prediction"
    )


def _bundle_mtime_ns(bundle_dir: str) -> int:
    return (
        max(p.stat().st_mtime_ns for p in Path(bundle_dir).iterdir() if p.is_file())
        if Path(bundle_dir).is_dir()
        else 0
    )


def predict_command(args: argparse.Namespace) -> None:
    """`fuseline predict`: refusals before the flow starts are one line (inside a flow run Prefect
    logs a traceback), then the predictions and one line saying where they are."""
    output = args.output or default_output_path(args.input)
    verify_bundle(Path(check_predict_paths(args.model, args.input, output, args.params)))
    check_cluster(args.params)
    summary = predict(args.model, args.input, output, args.params, parse_roots(args.root))
    print(f"{summary['rows']} predictions -> {summary['output']}")


if __name__ == "__main__":
    run_command("predict", predict_command)
