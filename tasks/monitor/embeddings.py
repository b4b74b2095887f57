"""Text, image and audio columns as embeddings, and the drift of each column's vectors.

Vectors come through extraction's own plan/encode steps and the row-level feature cache,
exactly as batch prediction computes them: every reference row was encoded when the model
was trained, so the reference side costs a cache read, and the batch side costs only the
texts and files nobody has encoded before (which are then cached for prediction too).
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from modelzoo.encoders.loading import fitted_encoder, fitted_state_owner
from tasks.config import DataConfig, DriftThresholds, EncodersConfig
from tasks.errors import DataError
from tasks.features.cache import FeatureCache
from tasks.features.encode_chunks import ProcessEncoderSpec
from tasks.features.extract import EncoderSpec, encode_chunk, plan_extraction
from tasks.modalities import embedded, modality
from tasks.monitor.checks import Check, judge
from tasks.monitor.domain import domain_classifier_drift
from tasks.paths import Layout
from tasks.serve.predict import gather_blocks

Blocks = dict[str, tuple[np.ndarray, np.ndarray]]  # "text.title" -> ((rows, dim) vectors, (rows,) present)


def encoder_specs(
    encoders: EncodersConfig, data: DataConfig, layout: Layout | None = None, exclude: Collection[str] = ()
) -> dict[str, EncoderSpec]:
    """The encoders params.yaml names, for each embedded modality with declared columns.

    Used when no model bundle is given; with one, its own (fingerprint-checked) specs are used
    and its modalities are `exclude`d here. An encoder fitted on the data (tfidf) is the one
    extract last fitted, `layout.fitted(<modality>)`.
    """
    layout = layout or Layout()
    specs: dict[str, EncoderSpec] = {}
    for plugin in embedded():
        if plugin.columns(data) and plugin.name not in exclude:
            settings = plugin.encoder_settings(encoders)
            spec = ProcessEncoderSpec(plugin.name, settings.model, settings.size, settings.batch_size)
            if fitted_encoder(plugin.name, settings.model):
                state = layout.fitted(plugin.name)
                if fitted_state_owner(plugin.name, state) is None:
                    raise DataError(
                        f"the {settings.model} {plugin.name} encoder is fitted by extract and {state} holds "
                        "no fitted state: run `dvc repro`, or give the monitor a model (--model)"
                    )
                spec = spec.fitted_at(state)
            specs[plugin.name] = spec
    return specs


def embed_rows(
    rows: pd.DataFrame,
    data: DataConfig,
    specs: dict[str, EncoderSpec],
    roots: dict[str, Path],
    cache: FeatureCache,
    device: torch.device,
) -> Blocks:
    """Each embedded column's vectors and presence for these aligned-like rows."""
    blocks: Blocks = {}
    for kind, spec in specs.items():
        plugin = modality(kind)
        columns = plugin.columns(data)
        if not columns:
            continue
        contents = plugin.contents(rows, columns, roots.get(kind) or plugin.root(data), "monitored rows")
        job = plan_extraction(spec, contents, len(rows), cache, device, chunk_rows=max(1, len(contents.keys)))
        try:
            for index in range(job.chunk_count):
                encode_chunk(job, index)
            vectors, present = gather_blocks(job, len(rows))
        finally:
            job.close()
        blocks |= {name: (vectors[name], present[name]) for name in vectors}
    return blocks


def embedding_checks(reference: Blocks, batch: Blocks, thresholds: DriftThresholds, seed: int) -> list[Check]:
    """One domain-classifier test per embedded column, on the rows that have a value on each side."""
    checks = []
    for name in sorted(set(reference) & set(batch)):
        role, _, column = name.partition(".")
        (ref_vectors, ref_present), (batch_vectors, batch_present) = reference[name], batch[name]
        comparison = domain_classifier_drift(ref_vectors[ref_present], batch_vectors[batch_present], seed)
        checks.append(judge(column, role, "embedding", comparison, thresholds))
    return checks
