"""Cache keys: which encoder (a namespace) and which content (a digest) an embedding belongs to.

An embedding is a pure function of the encoder and the row's content, so the key is exactly
those two and nothing about the row's position, id, split or source table: reordering,
re-splitting or re-joining rows cannot miss the cache, and the same text or image twice is
one entry.

- namespace: SHA-256 of the encoder fingerprint (model id, weights digest, preprocessing such
  as max_length / image_size / pooling, library versions) plus what fuseline itself does
  before the encoder (how pixels are decoded and resized, the compute precision). Every
  namespace is its own directory, so a new image encoder leaves text entries untouched.
- content digest: SHA-256 of the text's UTF-8 bytes, or of the image file's bytes (align has
  already hashed every image into `sha256__<column>`, so images are never re-read for keys).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

DIGEST_BYTES = 32
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")


def text_digest(text: str) -> bytes:
    """The 32-byte content key of one text, exactly as it is handed to the tokenizer."""
    return hashlib.sha256(text.encode("utf-8")).digest()


def text_digests(texts: Iterable[str]) -> list[bytes]:
    return [text_digest(text) for text in texts]


def digest_from_hex(value: str) -> bytes | None:
    """A hex SHA-256 (as align writes it) as 32 bytes, or None when it is not one."""
    value = value.strip().lower()
    return bytes.fromhex(value) if _HEX_DIGEST.fullmatch(value) else None


def namespace_of(fingerprint: Mapping[str, Any], pipeline: Mapping[str, Any]) -> str:
    """The directory name for one encoder + preprocessing: 32 hex chars of a canonical hash."""
    canonical = json.dumps(
        {"encoder": fingerprint, "pipeline": pipeline}, sort_keys=True, separators=(",", ":"), allow_nan=False
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]
