"""Encoding a chunk of contents into the feature cache, from whichever process runs it.

A task on a Dask or Ray worker shares nothing with the flow that planned it: no encoder,
no scratch arrays. So a chunk carries its contents (keys and sources) and the cache
directory, plans them against the cache in the worker (another worker may have committed
some meanwhile), encodes the misses and commits them as a shard. The flow then re-plans the
whole modality, finds every content cached, and writes the feature file as usual.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from torch import nn

from tasks.contents import Contents
from tasks.device import pick_device
from tasks.features.cache import FeatureCache
from tasks.features.cache.fingerprints import encoder_identity
from tasks.features.extract import EncoderSpec, Extraction, encode_chunk, plan_extraction


class ProcessEncoderSpec(EncoderSpec):
    """An EncoderSpec whose model is loaded once per process: chunk tasks on a worker share it."""

    @classmethod
    def of(cls, spec: EncoderSpec) -> ProcessEncoderSpec:
        return cls(spec.kind, spec.model, spec.size, spec.batch_size)

    def load(self) -> nn.Module:
        # The files' identity is part of the key: a directory rewritten in place (a bundle's
        # fitted tfidf state after retraining) must not be served from memory.
        return _load_once(self.kind, self.model, self.size, encoder_identity(self.kind, self.model, {}))


@lru_cache(maxsize=4)
def _load_once(kind: str, model: str, size: int, identity: str | None) -> nn.Module:
    del identity  # part of the cache key only
    return EncoderSpec(kind, model, size, 1).load()


def chunk_payloads(job: Extraction) -> list[dict[str, Any]]:
    """The planned misses of a modality, one self-contained payload per chunk."""
    payloads = []
    for index in range(job.chunk_count):
        slots = job.chunk(index)
        payloads.append(
            {
                "keys": [job.contents.keys[s] for s in slots],
                "sources": [job.spec.modality.portable_source(job.contents.sources[s]) for s in slots],
                "first_cell": [job.contents.first_cell[s] for s in slots],
            }
        )
    return payloads


def encode_payload(spec: EncoderSpec, payload: dict[str, Any], cache_dir: str, device: str = "auto") -> int:
    """Encode whichever of the payload's contents the cache still lacks; the number encoded."""
    keys = payload["keys"]
    contents = Contents(
        keys=list(keys),
        sources=[spec.modality.source_from_payload(s) for s in payload["sources"]],
        first_cell=[tuple(cell) for cell in payload["first_cell"]],
        blocks=[],
        values=len(keys),
    )
    spec, cache = ProcessEncoderSpec.of(spec), FeatureCache(cache_dir)
    job = plan_extraction(spec, contents, len(keys), cache, pick_device(device), chunk_rows=len(keys) or 1)
    try:
        for index in range(job.chunk_count):
            encode_chunk(job, index)
        return job.stats.computed
    finally:
        job.close()
