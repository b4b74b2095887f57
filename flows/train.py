"""Stage `train`: the fused head on all modalities, and the same head on each one alone.

The single-modality models are the baselines evaluate compares against; training them here
keeps evaluate a pure measurement and lets DVC cache them with the fused model.
"""

from __future__ import annotations

import pandas as pd
from prefect import flow, get_run_logger, task

from flows._entry import run_from_command_line
from tasks.atomic import atomic_dir, write_text
from tasks.config import Params, load_params
from tasks.device import use_all_cores
from tasks.paths import Layout
from tasks.train.assemble import feature_metadata, load_feature_set
from tasks.train.bundle import BASELINES, BundleMeta, write_bundle
from tasks.train.dataset import FeatureSet
from tasks.train.training import TrainResult, train_model


@task(name="train-head")
def train_head(features: FeatureSet, params: Params, label: str) -> TrainResult:
    result = train_model(features, params.data.task, params.fusion, params.train)
    get_run_logger().info(
        "%s: best epoch %d of %d, %.1f s", label, result.best_epoch, len(result.history), result.train_seconds
    )
    return result


def bundle_meta(
    result: TrainResult, params: Params, features: FeatureSet, metadata: dict[str, dict]
) -> BundleMeta:
    scaling = result.target_scaling
    return BundleMeta(
        task=params.data.task,
        fusion=params.fusion.model_dump(),
        in_dims=dict(result.in_dims),
        out_dim=result.out_dim,
        classes=features.classes,
        target_scaling=(scaling.mean, scaling.std) if scaling else None,
        encoders={m: meta["encoder"] for m, meta in metadata.items() if "encoder" in meta},
        tabular=metadata.get("tabular", {}).get("tabular_state"),
        wide=metadata.get("tabular", {}).get("wide_state"),
        best_epoch=result.best_epoch,
        params=params.model_dump(mode="json"),
    )


@flow(name="train")
def train(params_path: str = "params.yaml") -> dict[str, int]:
    """Write models/ (fused bundle + baselines/<modality>/) and the learning curve."""
    params = load_params(params_path)
    layout = Layout()
    use_all_cores()
    features = load_feature_set(layout, params.data.task)
    metadata = feature_metadata(layout)
    fused = train_head(features, params, "fused")
    baselines: dict[str, TrainResult] = {}
    if len(features.modalities) > 1:
        for modality in features.modalities:
            baselines[modality] = train_head(features.only_modalities({modality}), params, modality)
    with atomic_dir(layout.models) as tmp:
        write_bundle(tmp, fused.model, bundle_meta(fused, params, features, metadata))
        for modality, result in baselines.items():
            write_bundle(
                tmp / BASELINES / modality, result.model, bundle_meta(result, params, features, metadata)
            )
    curve = pd.DataFrame(fused.history)
    write_text(curve.to_csv(index=False), layout.train_plots / "learning_curve.csv")
    return {"fused": fused.best_epoch, **{m: r.best_epoch for m, r in baselines.items()}}


if __name__ == "__main__":
    run_from_command_line(train, "Train the fusion head and single-modality baselines.")
