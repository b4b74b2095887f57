"""Extraction on a cluster: a modality's cache misses encoded as independent tasks.

With `runtime.task_runner: dask | ray`, the extract stage first calls `fill_cache`: the
misses are planned here, cut into chunks of `cache.chunk_rows` contents, and each chunk is
a task that loads the encoder in its worker (once per worker process), encodes and commits
a shard to the shared cache directory. The usual extraction that follows finds every
content cached and only writes the feature file, so the result is the local runner's.
Workers need the project installed and the cache and image files at the same paths.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pandas as pd
import torch
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows._runtime import task_runner_for
from tasks.config import Params, RuntimeConfig
from tasks.device import cores
from tasks.features.cache import FeatureCache
from tasks.features.encode_chunks import chunk_payloads, encode_payload
from tasks.features.extract import EncoderSpec, plan_modality
from tasks.features.fitted import FittedState


@task(name="encode-contents", task_run_name="encode-{kind}-{index}", cache_policy=NO_CACHE)
def encode_contents(
    kind: str, index: int, spec: EncoderSpec, payload_file: str, cache_dir: str, device: str, threads: int
) -> int:
    """One chunk, self-contained: its contents come from a file, its results go to the cache."""
    if threads > 0:
        torch.set_num_threads(threads)
    raw = json.loads(Path(payload_file).read_text())
    payload = {**raw, "keys": [bytes.fromhex(k) for k in raw["keys"]]}
    return encode_payload(spec, payload, cache_dir, device)


@flow(name="extract-on-cluster")
def encode_on_runner(
    spec: EncoderSpec, payload_files: list[str], cache_dir: str, device: str, threads: int
) -> int:
    """Every chunk on whichever task runner this subflow was given; contents encoded in total."""
    futures = [
        encode_contents.submit(spec.kind, i, spec, path, cache_dir, device, threads)
        for i, path in enumerate(payload_files)
    ]
    return sum(future.result() for future in futures)


def fill_cache(
    params: Params,
    modality: str,
    aligned: pd.DataFrame,
    source: str = "aligned",
    state: FittedState | None = None,
) -> int:
    """Encode every cache miss of `modality` on `runtime.task_runner`; how many were encoded.

    A fitted encoder (tfidf) travels as its state directory's absolute path, which workers
    must see at the same path, like the cache.
    """
    cache_dir = str(Path(params.cache.dir).resolve())
    job = plan_modality(params, modality, aligned, FeatureCache(cache_dir), source, state)
    try:
        spec, payloads = job.spec, chunk_payloads(job)
    finally:
        job.close()
    if not payloads:
        return 0
    scratch = Path(cache_dir) / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"chunks-{modality}-", dir=scratch))
    try:
        files = []
        for i, payload in enumerate(payloads):
            path = work / f"chunk-{i:05d}.json"
            path.write_text(json.dumps({**payload, "keys": [k.hex() for k in payload["keys"]]}))
            files.append(str(path))
        runtime = params.runtime
        runner = task_runner_for(runtime.task_runner, runtime.address, runtime.workers)
        flow_with_runner = encode_on_runner.with_options(task_runner=runner)
        encoded = flow_with_runner(spec, files, cache_dir, params.train.device, threads_per_task(runtime))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    get_run_logger().info(
        "%s: %d contents encoded in %d chunks on %s",
        modality,
        encoded,
        len(files),
        params.runtime.task_runner,
    )
    return encoded


def threads_per_task(runtime: RuntimeConfig) -> int:
    """Torch threads in each chunk task: all cores locally, a fair share on a local cluster."""
    here = cores()
    if runtime.task_runner == "local":
        return here
    if runtime.address:
        return 0  # a remote worker knows its own cores; leave torch's default
    return max(1, here // runtime.workers)
