"""Row-level, content-addressed embedding cache: each distinct text or image is encoded once.

Layout under the cache directory (`cache.dir` in params.yaml, default `.cache/features`):

    <namespace>/namespace.json          the encoder fingerprint + pipeline settings (for people)
    <namespace>/shards/<sha256>.parquet (key, vector, ok) rows, named by their own checksum
    fingerprints/<identity>.json        remembered fingerprints (tasks/features/cache/fingerprints.py)
    scratch/                            per-run temp arrays, deleted when the run ends
    fitted/<modality>-<key>/            encoder states fitted on train rows (tfidf), keyed by
                                        their inputs (tasks/features/fitted.py)
    mapped/<key>/                       feature files decoded for memory-mapping (train, evaluate;
                                        tasks/features/mapped.py)
    hidden/<namespace>/                 a frozen lower part's outputs, for fine-tuning the top
                                        (tasks/train/lower_cache.py)

`tasks/cache_keys.py` says what a key is, `store.py` how shards are committed and verified,
`fingerprints.py` how a warm run avoids loading a model, and `gather.py` how entries become
the feature file. The cache is a memo of a pure function, so deleting any part of it only
costs time, and every file a later run reads back is checked first (shards by the SHA-256
that names them, fitted states by a manifest of SHA-256s, the rest by a CRC-32, see
`checksum.py`): a damaged one is reported by name and rebuilt, never used. Scratch arrays
live only as long as the run that made them, which alone reads them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.cache_keys import namespace_of
from tasks.features.cache.fingerprints import FingerprintMemo
from tasks.features.cache.store import ShardStore


class FeatureCache:
    """The cache directory: one shard store per namespace, plus the fingerprint memo."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.fingerprints = FingerprintMemo(self.root / "fingerprints")
        self.scratch = self.root / "scratch"

    def store(self, fingerprint: dict[str, Any], pipeline: dict[str, Any]) -> ShardStore:
        store = ShardStore(self.root / namespace_of(fingerprint, pipeline), dim=int(fingerprint["dim"]))
        store.describe({"encoder": fingerprint, "pipeline": pipeline})
        return store


__all__ = ["FeatureCache", "ShardStore"]
