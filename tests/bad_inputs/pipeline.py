"""Push one project directory through ingest -> align -> extract -> train -> predict.

The same task functions the flows call, on real files: params.yaml is read by load_params,
sources by ingest, the aligned table and feature blocks are written as Parquet and read back,
the head is trained and predicts the test rows. Prefect is left out (each stage's flow is a
thin wrapper, and the fault tests run the real flows) so one case costs about a second.

Encoders are loaded once per session and passed in; `stages` records how far a run got, so
a test can say at which stage an input must be refused.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from modelzoo.encoders.base import ImageEncoder, TextEncoder
from tasks.align import AlignReport, align
from tasks.assemble import load_feature_set
from tasks.atomic import atomic_dir, write_json
from tasks.config import Params, load_params
from tasks.dataset import FeatureSet
from tasks.extract import embed_images, embed_texts, image_blocks, row_ids, tabular_features, text_blocks
from tasks.feature_store import write_blocks
from tasks.ingest import ingest_sources, read_snapshots
from tasks.paths import Layout
from tasks.training import predict, train_model

CPU = torch.device("cpu")


@dataclass(frozen=True)
class Encoders:
    text: TextEncoder
    image: ImageEncoder


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
        test = features.of_split("test")
        predictions = predict(result.model, test, params.data.task, result.target_scaling)
    if not np.isfinite(predictions).all():  # silent damage: a run that "worked" but predicts NaN
        raise AssertionError(f"non-finite predictions: {predictions}")
    if len(predictions) != len(test.ids):
        raise AssertionError(f"{len(predictions)} predictions for {len(test.ids)} test rows")
    return Outcome(workdir, params, aligned, report, features, predictions, stages)


def _extract(params: Params, aligned: pd.DataFrame, layout: Layout, encoders: Encoders) -> None:
    columns, ids = params.data.columns, row_ids(aligned)
    matrix, state = tabular_features(aligned, list(columns.categorical), list(columns.numeric))
    blocks = {"tabular": matrix} if matrix.shape[1] else {}
    masks = {"tabular": np.ones(len(aligned), dtype=bool)} if matrix.shape[1] else {}
    write_blocks(layout.feature_file("tabular"), ids, blocks, masks, {"tabular_state": state.to_json()})
    text = params.encoders.text
    blocks, masks = text_blocks(
        aligned,
        list(columns.text),
        lambda texts: embed_texts(encoders.text, texts, text.max_length, text.batch_size, CPU),
    )
    write_blocks(layout.feature_file("text"), ids, blocks, masks, {})
    image = params.encoders.image
    blocks, masks = image_blocks(
        aligned,
        list(columns.image),
        Path(params.data.image_root),
        lambda paths: embed_images(encoders.image, paths, image.batch_size, CPU),
    )
    write_blocks(layout.feature_file("image"), ids, blocks, masks, {})
