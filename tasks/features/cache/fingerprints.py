"""Remembered encoder fingerprints, so a run with nothing to encode never loads a model.

A fingerprint needs the weights' digest, which needs the model loaded (seconds for MiniLM,
most of a warm run). The memo maps a cheap identity of the same inputs to the fingerprint
computed last time: the encoder name and preprocessing, the size and mtime of every weights
file, the versions of the libraries that change outputs, and the source of
`modelzoo/encoders`. Any of those changing is a memo miss and the model is loaded and hashed
again. Encoders whose weights live somewhere we cannot stat cheaply (hub ids, timm or
torchvision names) get no identity and are always loaded; the memo only ever saves time.
Extraction also re-checks the memo against the real fingerprint whenever it loads the model.

Each entry carries the CRC-32 of its fingerprint's canonical JSON: an entry damaged on disk
(a flipped byte that still parses, a zeroed or cut-short file) is reported and recomputed.
Unchecked, a damaged `dim` crashed extraction and a damaged digest made prediction refuse a
sound bundle.
"""

from __future__ import annotations

import hashlib
import json
import logging
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from tasks.atomic import write_json
from tasks.features.cache.checksum import crc32_of, stamp

log = logging.getLogger(__name__)

# The libraries whose versions encoder_fingerprint records, plus the ones that run before it.
_VERSIONED = ("torch", "transformers", "tokenizers", "timm", "torchvision", "pillow", "numpy")
MEMO_FORMAT = 2  # 2: {"fingerprint", "crc32"}; part of the identity, so older entries go unread


class FingerprintMemo:
    """identity -> fingerprint, one small JSON file per identity under `directory`."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def get(self, identity: str | None) -> dict[str, Any] | None:
        """The remembered fingerprint, or None when absent or damaged (then it is recomputed)."""
        if identity is None:
            return None
        path = self.directory / f"{identity}.json"
        try:
            entry = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            log.warning("fingerprint memo %s is unreadable (%s); recomputing it", path, type(err).__name__)
            return None
        fingerprint = entry.get("fingerprint") if isinstance(entry, dict) else None
        if not isinstance(fingerprint, dict) or entry.get("crc32") != _checksum(fingerprint):
            log.warning("fingerprint memo %s does not match its checksum; recomputing it", path)
            return None
        return fingerprint

    def put(self, identity: str | None, fingerprint: dict[str, Any]) -> None:
        if identity is not None:
            entry = {"fingerprint": fingerprint, "crc32": _checksum(fingerprint)}
            write_json(entry, self.directory / f"{identity}.json")


def _checksum(fingerprint: dict[str, Any]) -> str:
    canonical = json.dumps(fingerprint, sort_keys=True, separators=(",", ":"))
    return stamp(crc32_of(canonical.encode()))


def encoder_identity(kind: str, model: str, preprocessing: dict[str, Any]) -> str | None:
    """A hash of everything a fingerprint depends on that is cheap to read; None if unknowable."""
    location = _weights_location(kind, model)
    if location is None:
        return None
    files = sorted(location.rglob("*")) if location.is_dir() else [location]
    stats = []
    for file in files:
        if file.is_file():
            info = file.stat()
            stats.append([file.relative_to(location).as_posix(), info.st_size, info.st_mtime_ns])
    identity = {
        "memo": MEMO_FORMAT,
        "kind": kind,
        "model": model,
        "location": str(location),
        "preprocessing": preprocessing,
        "files": stats,
        "versions": _versions(),
        "code": _encoder_code_digest(),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]


def _weights_location(kind: str, model: str) -> Path | None:
    """Where a registered encoder's packaged weights, or a local model directory, live.

    A registered encoder says where its weights are through a `weights_location()` attribute;
    one without it (or a hub, timm or torchvision name) gets no identity.
    """
    from modelzoo.registry import lookup, names

    registry_kind = f"{kind}_encoder"
    if model in names(registry_kind):
        locate = getattr(lookup(registry_kind, model), "weights_location", None)
        if locate is None:
            return None
        try:
            return Path(locate())
        except OSError:
            return None  # not installed: loading will say so properly
    local = Path(model).expanduser()
    return local.resolve() if local.is_dir() else None


@lru_cache(maxsize=1)
def _versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for package in _VERSIONED:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


@lru_cache(maxsize=1)
def _encoder_code_digest() -> str:
    """The encoders' own source: a change to pooling or loading code must not reuse a memo.

    Read once per process, whose encoders run the code imported at its start (re-reading the
    files cost the API server 0.4 ms per lookup, two or more per request)."""
    import modelzoo.encoders as encoders

    digest = hashlib.sha256()
    for source in sorted(Path(encoders.__file__).parent.glob("*.py")):
        digest.update(source.name.encode())
        digest.update(source.read_bytes())
    return digest.hexdigest()
