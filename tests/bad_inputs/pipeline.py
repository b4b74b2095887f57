"""Push one project directory through ingest -> align -> extract -> train -> predict.

The same task functions the flows call, on real files: params.yaml is read by load_params,
sources by ingest, the aligned table is written as Parquet and read back, extraction goes
through the row-level cache exactly as the extract stage does (plan, encode chunks, write
the feature file), the head is trained and predicts the test rows. Prefect is left out (each
stage's flow is a thin wrapper, and the fault tests run the real flows) so one case costs
about a second.

All cases share one feature cache, so a case pays only for the texts and images it changed;
`stages` records how far a run got, so a test can say at which stage an input must be refused.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from modelzoo.encoders.base import ImageEncoder, TextEncoder
from tasks.atomic import atomic_dir, write_json
from tasks.config import Params, load_params
from tasks.data.align import AlignReport, align
from tasks.data.ingest import ingest_sources, read_snapshots
from tasks.features.cache import FeatureCache
from tasks.features.extract import extract_embeddings, row_ids, write_tabular_features
from tasks.features.feature_store import write_blocks
from tasks.paths import Layout
from tasks.train.assemble import load_feature_set
from tasks.train.dataset import FeatureSet
from tasks.train.training import head_features, predict, train_model

CPU = torch.device("cpu")


@dataclass(frozen=True)
class Encoders:
    """Encoders for checks that compare with a direct forward, and the suite's feature cache."""

    text: TextEncoder
    image: ImageEncoder
    cache_dir: Path


@dataclass
class Outcome:
    """Everything a completed run produced that a case may check."""

    root: Path  # the project directory the run worked in
    params: Params
    aligned: pd.DataFrame
    report: AlignReport
    features: FeatureSet
    predictions: np.ndarray  # test rows, in the task's units
    stages: list[str] = field(default_factory=list)


def run_pipeline(workdir: Path, encoders: Encoders, stages: list[str] | None = None) -> Outcome:
    """Run every stage in `workdir` (where params.yaml and the sources are); raise what they raise."""
    stages = [] if stages is None else stages
    with contextlib.chdir(workdir):
        stages.append("params")
        params = load_params("params.yaml")
        layout = Layout()
        stages.append("ingest")
        ingest_sources(params.data, layout.raw)
        stages.append("align")
        aligned, report = align(params.data, read_snapshots(layout.raw))
        with atomic_dir(layout.aligned_dir) as tmp:
            aligned.to_parquet(tmp / layout.aligned.name, index=False)
            write_json(asdict(report), tmp / layout.align_summary.name)
        stages.append("extract")
        _extract(params, pd.read_parquet(layout.aligned), layout, encoders)
        stages.append("train")
        features = load_feature_set(layout, params.data.task)
        result = train_model(features, params.data.task, params.fusion, params.train, progress=False)
        stages.append("predict")
        test = head_features(features.of_split("test"), params.fusion.head)
        predictions = predict(result.model, test, params.data.task, result.target_scaling)
    if not np.isfinite(predictions).all():  # silent damage: a run that "worked" but predicts NaN
        raise AssertionError(f"non-finite predictions: {predictions}")
    if len(predictions) != len(test.ids):
        raise AssertionError(f"{len(predictions)} predictions for {len(test.ids)} test rows")
    return Outcome(workdir, params, aligned, report, features, predictions, stages)


def _extract(params: Params, aligned: pd.DataFrame, layout: Layout, encoders: Encoders) -> None:
    write_tabular_features(params, aligned, layout.feature_file("tabular"))
    cache = FeatureCache(encoders.cache_dir)
    for modality in ("text", "image"):
        target = layout.feature_file(modality)
        if getattr(params.data.columns, modality):
            extract_embeddings(params, modality, aligned, cache, target, "aligned.parquet")
        else:  # as the extract flow does for a modality with no columns
            write_blocks(target, row_ids(aligned), {}, {}, {})
