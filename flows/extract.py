"""Stage `extract`: tabular preprocessing and pretrained text/image embeddings per modality.

dvc.yaml runs one stage per modality (`extract@text`, ...), so changing the image encoder
reruns only image extraction.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger, task

from flows._entry import run_from_command_line
from modelzoo.encoders.loading import encoder_fingerprint, load_image_encoder, load_text_encoder
from tasks.config import Params, load_params
from tasks.device import pick_device, use_all_cores
from tasks.extract import embed_images, embed_texts, image_blocks, row_ids, tabular_features, text_blocks
from tasks.feature_store import write_blocks
from tasks.paths import MODALITIES, Layout


@task(name="extract-tabular")
def extract_tabular(params: Params, aligned: pd.DataFrame, target: Path) -> int:
    columns = params.data.columns
    matrix, state = tabular_features(aligned, list(columns.categorical), list(columns.numeric))
    present = matrix.shape[1] > 0
    blocks = {"tabular": matrix} if present else {}
    masks = {"tabular": aligned.index.to_numpy() >= 0} if present else {}
    write_blocks(target, row_ids(aligned), blocks, masks, {"tabular_state": state.to_json()})
    return len(aligned)


@task(name="extract-text")
def extract_text(params: Params, aligned: pd.DataFrame, target: Path) -> int:
    cfg = params.encoders.text
    columns = list(params.data.columns.text)
    if not columns:
        write_blocks(target, row_ids(aligned), {}, {}, {})
        return 0
    device = pick_device(params.train.device)
    encoder = load_text_encoder(cfg.model)
    blocks, present = text_blocks(
        aligned, columns, lambda texts: embed_texts(encoder, texts, cfg.max_length, cfg.batch_size, device)
    )
    fingerprint = encoder_fingerprint(encoder, max_length=cfg.max_length)
    write_blocks(target, row_ids(aligned), blocks, present, {"encoder": fingerprint})
    return int(sum(mask.sum() for mask in present.values()))


@task(name="extract-image")
def extract_image(params: Params, aligned: pd.DataFrame, target: Path) -> int:
    cfg = params.encoders.image
    columns = list(params.data.columns.image)
    if not columns:
        write_blocks(target, row_ids(aligned), {}, {}, {})
        return 0
    device = pick_device(params.train.device)
    encoder = load_image_encoder(cfg.model, cfg.image_size)
    blocks, present = image_blocks(
        aligned,
        columns,
        Path(params.data.image_root),
        lambda paths: embed_images(encoder, paths, cfg.batch_size, device),
    )
    fingerprint = encoder_fingerprint(encoder, image_size=cfg.image_size)
    write_blocks(target, row_ids(aligned), blocks, present, {"encoder": fingerprint})
    return int(sum(mask.sum() for mask in present.values()))


_EXTRACTORS = {"tabular": extract_tabular, "text": extract_text, "image": extract_image}


@flow(name="extract")
def extract(params_path: str = "params.yaml", modality: str | None = None) -> dict[str, int]:
    """Write data/features/<modality>.parquet for one modality, or all when none is named."""
    params = load_params(params_path)
    layout = Layout()
    use_all_cores()
    aligned = pd.read_parquet(layout.aligned)
    logger = get_run_logger()
    encoded: dict[str, int] = {}
    for name in [modality] if modality else MODALITIES:
        started = time.perf_counter()
        encoded[name] = _EXTRACTORS[name](params, aligned, layout.feature_file(name))
        seconds = time.perf_counter() - started
        logger.info("%s: %d values encoded in %.1f s", name, encoded[name], seconds)
    return encoded


if __name__ == "__main__":
    run_from_command_line(extract, "Encode features per modality.", {"modality": MODALITIES})
