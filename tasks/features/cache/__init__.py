"""Row-level, content-addressed embedding cache: each distinct text or image is encoded once.

Layout under the cache directory (`cache.dir` in params.yaml, default `.cache/features`):

    <namespace>/namespace.json          the encoder fingerprint + pipeline settings (for people)
    <namespace>/shards/<sha256>.parquet (key, vector, ok) rows, named by their own checksum
    fingerprints/<identity>.json        remembered fingerprints (tasks/features/cache/fingerprints.py)
    scratch/                            per-run temp arrays, deleted when the run ends
    fitted/<modality>-<key>/            encoder states fitted on train rows (tfidf), keyed by
                                        their inputs (tasks/features/fitted.py)

`keys.py` says what a key is, `store.py` how shards are committed and verified,
`fingerprints.py` how a warm run avoids loading a model, and `gather.py` how entries become
the feature file. The cache is a memo of a pure function, so deleting any part of it only
costs time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.features.cache.fingerprints import FingerprintMemo
from tasks.features.cache.keys import namespace_of
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
