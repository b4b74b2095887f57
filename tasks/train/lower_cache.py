"""The content-addressed cache of a frozen lower part's outputs, for fine-tuning only the top.

When only an encoder's top learns, what its frozen lower part computes is a pure function of
the content (a text, an image file), so it is computed once per distinct content and kept
here: one float16 array per content, named by the content's SHA-256, in a namespace that
holds everything else that decides it (the encoder by weights, the split point, max_length
or image size):

    <cache_dir>/hidden/<namespace>/<aa>/<sha256>.npy
    <cache_dir>/hidden/<namespace>/key.json      what the namespace stands for, for humans

Every entry is written to a temp file beside it and renamed into place, so a reader sees a
whole entry or none. An entry is an .npy file followed by a 16-byte trailer, `FLCRC32:` and
the CRC-32 of the .npy bytes in hex (np.load ignores it): an entry cut short, zeroed or with
one byte changed fails the check, is reported and recomputed, never used. The shape and
finiteness checks alone would pass a flipped bit in a float. The cache is re-creatable, so
entries are not fsynced one by one.

The modality's FineTuning (tasks/modalities/base.py) says what decides its namespace, which
entries are plausible, and how its lower part runs over batches of contents.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from modelzoo.encoders.split import FrozenLower
from tasks.atomic import process_alive, write_json
from tasks.features.cache.checksum import crc32_of, stamp
from tasks.modalities.base import FineTuning

log = logging.getLogger(__name__)

_TEMP = re.compile(r"^\..+\.(?P<pid>\d+)\.[^.]+\.tmp$")
ENTRY_FORMAT = 2  # 2: entries end with a CRC-32 trailer; part of the namespace, so older ones go unread
_TRAILER = b"FLCRC32:"  # then 8 hex digits
_TRAILER_BYTES = len(_TRAILER) + 8


class LowerOutputCache:
    """`lower`'s outputs by content digest, read from disk or computed (and stored) once.

    `computed` and `read` count distinct contents, so callers (and tests) can tell a warm
    run from a cold one.
    """

    def __init__(
        self,
        cache_dir: Path,
        tuning: FineTuning,
        lower: FrozenLower,
        device: torch.device | None = None,
        progress: bool = True,
    ) -> None:
        self.tuning = tuning
        self.lower = lower
        self.noun = tuning.modality.name  # in progress bars
        self.batch_size = int(tuning.section.batch_size)
        self.device = device or torch.device("cpu")
        self.progress = progress
        self.description = tuning.describe(lower)
        self.namespace = namespace_of({**self.description, "entry_format": ENTRY_FORMAT})
        self.root = Path(cache_dir) / "hidden" / self.namespace
        self.computed = 0
        self.read = 0
        self._swept = False

    def path_of(self, digest: str) -> Path:
        return self.root / digest[:2] / f"{digest}.npy"

    def outputs(self, wanted: Mapping[str, Any]) -> dict[str, Tensor]:
        """digest -> the lower output of each content; a source that cannot be used is left out."""
        found: dict[str, Tensor] = {}
        for digest in wanted:
            state = self._read(digest)
            if state is not None:
                found[digest] = state
        self.read += len(found)
        missing = [(digest, source) for digest, source in wanted.items() if digest not in found]
        if missing:
            found.update(self._compute(missing))
        return found

    def _read(self, digest: str) -> Tensor | None:
        """The entry, or None when absent or not a whole, plausible entry (then it is recomputed)."""
        path = self.path_of(digest)
        try:
            array = np.load(io.BytesIO(checked_entry(path.read_bytes())), allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError) as err:
            log.warning("lower-output cache: unreadable entry %s (%s); recomputing it", path, err)
            return None
        plausible = self.tuning.plausible(array, self.lower)
        if array.dtype != np.float16 or not plausible or not np.isfinite(array).all():
            log.warning("lower-output cache: malformed entry %s %s; recomputing it", path, array.shape)
            return None
        return torch.from_numpy(array)

    def _compute(self, missing: list[tuple[str, Any]]) -> dict[str, Tensor]:
        """Run the lower part over `missing` in batches, storing each output as it comes."""
        self._prepare_root()
        ordered = self.tuning.order(missing)
        out: dict[str, Tensor] = {}
        home = next((p.device for p in self.lower.parameters()), self.device)  # none: a fixed front end
        self.lower.to(self.device)
        try:
            bar = tqdm(
                total=len(ordered), desc=f"lower {self.noun}s", unit=self.noun, disable=not self.progress
            )
            with bar:
                batches = [ordered[i : i + self.batch_size] for i in range(0, len(ordered), self.batch_size)]
                outputs = self.tuning.lower_batches(self.lower, batches, self.device)
                for batch, states in zip(batches, outputs, strict=True):
                    for (digest, _), state in zip(batch, states, strict=True):
                        if state is not None:
                            self._write(digest, state)
                            out[digest] = state
                    bar.update(len(batch))
        finally:
            self.lower.to(home)  # its weights are the base encoder's: put them back where they were
        self.computed += len(out)
        return out

    def _prepare_root(self) -> None:
        """Describe the namespace for humans, and drop temps that killed writers left (once)."""
        if self._swept:
            return
        self._swept = True
        if not (self.root / "key.json").is_file():
            write_json(self.description, self.root / "key.json")
        for temp in self.root.glob("*/.*.tmp"):
            match = _TEMP.match(temp.name)
            if match and not process_alive(int(match["pid"])):
                temp.unlink(missing_ok=True)

    def _write(self, digest: str, state: Tensor) -> None:
        """Temp beside the entry, then rename: a reader never sees half an entry."""
        path = self.path_of(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        buffer = io.BytesIO()
        np.save(buffer, state.numpy(), allow_pickle=False)
        data = buffer.getvalue()
        try:
            with open(temp, "wb") as handle:
                handle.write(data + _TRAILER + stamp(crc32_of(data)).encode())
            os.replace(temp, path)
        finally:
            temp.unlink(missing_ok=True)


def checked_entry(data: bytes) -> bytes:
    """An entry's .npy bytes, after checking them against its trailer.

    Raises:
        ValueError: no trailer (cut short, zeroed) or a checksum that does not match.
    """
    body, trailer = data[:-_TRAILER_BYTES], data[-_TRAILER_BYTES:]
    if len(data) < _TRAILER_BYTES or not trailer.startswith(_TRAILER):
        raise ValueError("no checksum trailer: cut short or overwritten")
    if trailer[len(_TRAILER) :] != stamp(crc32_of(body)).encode():
        raise ValueError("does not match its checksum")
    return body


def namespace_of(description: dict[str, Any]) -> str:
    """A short stable name for a namespace description (canonical JSON, hashed)."""
    canonical = json.dumps(description, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]
