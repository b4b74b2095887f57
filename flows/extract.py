"""Stage `extract`: tabular preprocessing and pretrained embeddings, one modality at a time.

dvc.yaml runs one stage per modality (`extract@text`, ...), so changing the image encoder
reruns only image extraction. Embedded modalities (tasks/modalities) go through the row-level cache
(`cache.dir`): a plan task per modality, then one task per chunk of cache misses (each
commits a shard, so a killed run resumes from there), then a task that writes the feature
file. Each run publishes a `fuseline-extract` table artifact: rows seen, computed, reused.
An encoder fitted on the data (`encoders.text.model: tfidf`) is first fitted on the train
rows, or found in the cache (a fit task), and published as `data/features/<modality>.fitted`,
which every modality writes (a one-line note when its encoder is not fitted; see
tasks/features/fitted.py).
With `runtime.task_runner: dask | ray` the misses are first encoded on that cluster
(flows/scaleout.py), so the local pass only finds cached contents and writes the file.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # first: a modality without columns needs none of the imports below
    from flows._no_columns import finish_if_no_columns

    finish_if_no_columns(sys.argv[1:])

import logging
from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows._entry import run_from_command_line
from flows.scaleout import fill_cache
from tasks import modalities
from tasks.config import Params, load_params
from tasks.device import pick_device
from tasks.features.cache import FeatureCache
from tasks.features.extract import (
    Extraction,
    ExtractStats,
    configure_threads,
    encode_chunk,
    plan_modality,
    row_ids,
    write_features,
    write_tabular_features,
)
from tasks.features.feature_store import write_blocks
from tasks.features.fitted import FittedState, needs_fitting, prepare_state, publish_state
from tasks.modalities import TABULAR, modality_names
from tasks.paths import Layout

ARTIFACT_KEY = "fuseline-extract"
# Chunk progress and cache hit/miss counts are INFO records of these loggers; Prefect forwards
# the `tasks` loggers (PREFECT_LOGGING_EXTRA_LOGGERS) but leaves them at the root's WARNING.
_PROGRESS_LOGGERS = ("tasks.features.extract", "tasks.features.cache")


@task(name="extract-tabular")
def extract_tabular(params: Params, aligned: pd.DataFrame, target: Path) -> int:
    write_tabular_features(params, aligned, target)
    return len(aligned)


@task(name="extract-fit", task_run_name="fit-{modality}", cache_policy=NO_CACHE)
def fit(
    params: Params, modality: str, aligned: pd.DataFrame, cache: FeatureCache, out: Path
) -> FittedState | None:
    """The modality's encoder fitted on the train rows (or reused from the cache), published as `out`."""
    state = prepare_state(params, modality, aligned, cache.root) if needs_fitting(params, modality) else None
    return publish_state(state, out, modality)


# Extraction objects hold an encoder and big arrays: never hash them for Prefect's cache.
@task(name="extract-plan", task_run_name="plan-{modality}", cache_policy=NO_CACHE)
def plan(
    params: Params,
    modality: str,
    aligned: pd.DataFrame,
    cache: FeatureCache,
    source: str,
    state: FittedState | None = None,
) -> Extraction:
    return plan_modality(params, modality, aligned, cache, source, state)


@task(name="extract-chunk", task_run_name="encode-{modality}-{index}", cache_policy=NO_CACHE)
def encode(job: Extraction, modality: str, index: int) -> int:
    return encode_chunk(job, index)


@task(name="extract-write", task_run_name="write-{modality}", cache_policy=NO_CACHE)
def write(job: Extraction, modality: str, aligned: pd.DataFrame, target: Path, dtype: str) -> ExtractStats:
    return write_features(job, row_ids(aligned), target, dtype)


def embed_modality(
    params: Params, modality: str, aligned: pd.DataFrame, cache: FeatureCache, layout: Layout
) -> ExtractStats:
    """plan -> encode per chunk -> write, each a Prefect task; the scratch arrays always go."""
    target = layout.feature_file(modality)
    if not modalities.modality(modality).columns(params.data):
        publish_state(None, layout.fitted(modality), modality)
        write_blocks(target, row_ids(aligned), {}, {}, {})
        return ExtractStats(modality, rows=len(aligned))
    state = fit(params, modality, aligned, cache, layout.fitted(modality))
    if params.runtime.task_runner != "local":
        fill_cache(params, modality, aligned, str(layout.aligned), state)
    job = plan(params, modality, aligned, cache, str(layout.aligned), state)
    try:
        for index in range(job.chunk_count):
            encode(job, modality, index)
        return write(job, modality, aligned, target, params.cache.dtype)
    finally:
        job.close()


@flow(name="extract")
def extract(params_path: str = "params.yaml", modality: str | None = None) -> dict[str, dict]:
    """Write data/features/<modality>.parquet for one modality, or all when none is named."""
    params = load_params(params_path)
    layout = Layout()
    configure_threads(pick_device(params.train.device))
    aligned = pd.read_parquet(layout.aligned)
    cache = FeatureCache(params.cache.dir)
    logger = get_run_logger()
    for name in _PROGRESS_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)
    report: dict[str, dict] = {}
    for name in [modality] if modality else modality_names():
        if name == TABULAR:
            publish_state(None, layout.fitted(name), name)  # its fitted state is in the feature file
            rows = extract_tabular(params, aligned, layout.feature_file(name))
            report[name] = ExtractStats(name, rows=rows, values=rows).as_dict()
            continue
        stats = embed_modality(params, name, aligned, cache, layout)
        report[name] = stats.as_dict()
        logger.info(
            "%s: %d rows, %d distinct values: %d reused from the cache, %d computed (%.1f/s), "
            "%d corrupt shards recomputed, %.1f s",
            name, stats.rows, stats.unique, stats.reused, stats.computed,
            report[name]["computed_per_s"], stats.corrupt_shards, stats.seconds,
        )  # fmt: skip
    create_table_artifact(
        key=ARTIFACT_KEY,
        table=[{"modality": name, **row} for name, row in report.items()],
        description="Extraction: rows seen, distinct values reused from the cache or computed, throughput",
    )
    return report


if __name__ == "__main__":
    run_from_command_line(extract, "Encode features per modality.", {"modality": modality_names()})
