"""`tfidf`: TF-IDF of word n-grams projected by a truncated SVD, a classic text encoder fitted on the data.

It is made from the train rows (scikit-learn's TfidfVectorizer, then TruncatedSVD; see
tasks/features/tfidf.py), not shipped, so it is registered for params.yaml to name but is
loaded only from a fitted state directory. Its forward reproduces scikit-learn's
`svd.transform(vectorizer.transform(texts))` for the settings below (lowercase, the default
word token pattern, n-grams, sublinear tf, l2 norm, float32) with torch sparse products, so
prediction needs neither scikit-learn nor pickle. The state is two files, no pickle:

    tfidf.json          format version, analyzer settings, the vocabulary in column order, fit notes
    tfidf.safetensors   idf (V,) and components (dim, V), float32

The vocabulary is not a tensor, so a `state_digest` buffer holds a SHA-256 of the analyzer
settings and the vocabulary: the weights digest in the encoder fingerprint covers it, and a
refit with another vocabulary gets another cache namespace even with equal idf and components.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from modelzoo.encoders.base import RawTextEncoder
from modelzoo.registry import register

FORMAT_VERSION = 1
STATE_JSON = "tfidf.json"
STATE_TENSORS = "tfidf.safetensors"
SKLEARN_TOKEN_PATTERN = r"(?u)\b\w\w+\b"  # scikit-learn's default: words of two or more characters


@dataclass(frozen=True)
class TfidfSettings:
    """The analyzer and weighting a fitted state was made with (scikit-learn's parameter names)."""

    ngram_range: tuple[int, int] = (1, 2)
    lowercase: bool = True
    token_pattern: str = SKLEARN_TOKEN_PATTERN
    sublinear_tf: bool = True  # tf = 1 + log(count)
    norm: str | None = "l2"

    def __post_init__(self) -> None:
        low, high = self.ngram_range
        if not 1 <= low <= high:
            raise ValueError(
                f"tfidf: ngram_range must be (min_n, max_n) with 1 <= min_n <= max_n, got {self.ngram_range}"
            )
        if self.norm not in ("l2", None):
            raise ValueError(f"tfidf: norm must be 'l2' or null, got {self.norm!r}")
        if re.compile(self.token_pattern).groups > 1:  # scikit-learn refuses these too
            raise ValueError(f"tfidf: token_pattern {self.token_pattern!r} has more than one capturing group")

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ngram_range": list(self.ngram_range)}

    @classmethod
    def from_json(cls, data: object) -> TfidfSettings:
        if not isinstance(data, dict) or set(data) != set(cls.__dataclass_fields__):
            raise ValueError(
                f"tfidf: settings must name exactly {sorted(cls.__dataclass_fields__)}, got {data!r}"
            )
        ngrams = data["ngram_range"]
        if not (isinstance(ngrams, list) and len(ngrams) == 2 and all(type(n) is int for n in ngrams)):
            raise ValueError(f"tfidf: ngram_range must be two integers, got {ngrams!r}")
        if not all(isinstance(data[k], bool) for k in ("lowercase", "sublinear_tf")):
            raise ValueError("tfidf: lowercase and sublinear_tf must be booleans")
        if not isinstance(data["token_pattern"], str):
            raise ValueError("tfidf: token_pattern must be a string")
        return cls(
            (ngrams[0], ngrams[1]),
            data["lowercase"],
            data["token_pattern"],
            data["sublinear_tf"],
            data["norm"],
        )


@register("text_encoder", "tfidf")
class TfidfSvdEncoder(RawTextEncoder):
    """Raw strings -> l2-normalised sublinear tf-idf rows (B, V), sparse -> @ components.T -> (B, dim)."""

    model_id = "tfidf"
    pooling = "tfidf-svd"
    fitted = True  # made from the data: loaded from a state directory, never by name
    state_file = STATE_JSON

    def __init__(
        self,
        vocabulary: list[str],
        idf: torch.Tensor,
        components: torch.Tensor,
        settings: TfidfSettings | None = None,
        notes: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        settings = settings or TfidfSettings()
        terms = len(vocabulary)
        if terms == 0 or len(set(vocabulary)) != terms or not all(isinstance(t, str) for t in vocabulary):
            raise ValueError("tfidf: the vocabulary must be a non-empty list of distinct strings")
        if (
            idf.shape != (terms,)
            or components.ndim != 2
            or components.shape[1] != terms
            or components.shape[0] < 1
        ):
            raise ValueError(
                f"tfidf: idf {tuple(idf.shape)} and components {tuple(components.shape)} do not fit a "
                f"vocabulary of {terms} terms (expected ({terms},) and (dim, {terms}))"
            )
        if not (torch.isfinite(idf).all() and torch.isfinite(components).all()):
            raise ValueError("tfidf: idf and components must be finite")
        self.settings = settings
        self.vocabulary = list(vocabulary)
        self.notes = dict(notes or {})  # how it was fitted (asked dim, texts, versions): for people only
        self.dim = int(components.shape[0])
        self._index = {term: column for column, term in enumerate(self.vocabulary)}
        self._tokens = re.compile(settings.token_pattern).findall
        self.register_buffer("idf", idf.detach().to(torch.float32).contiguous())  # (V,)
        self.register_buffer("components", components.detach().to(torch.float32).contiguous())  # (dim, V)
        digest = hashlib.sha256(_canonical({"settings": settings.to_json(), "vocabulary": self.vocabulary}))
        self.register_buffer("state_digest", torch.tensor(list(digest.digest()), dtype=torch.uint8))  # (32,)

    # --- encoding ----------------------------------------------------------------------------

    def analyze(self, text: str) -> list[str]:
        """scikit-learn's word analyzer: lowercase, tokens by the pattern, then word n-grams."""
        tokens = self._tokens(text.lower() if self.settings.lowercase else text)
        low, high = self.settings.ngram_range
        if high == 1:
            return tokens
        grams = list(tokens) if low == 1 else []
        for n in range(max(low, 2), min(high + 1, len(tokens) + 1)):
            grams.extend(" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
        return grams

    def forward(self, texts: list[str]) -> torch.Tensor:  # type: ignore[override]
        device = self.idf.device
        rows: list[int] = []
        columns: list[int] = []
        counts: list[int] = []
        index = self._index
        for row, text in enumerate(texts):
            counted = Counter(column for column in map(index.get, self.analyze(text)) if column is not None)
            ordered = sorted(counted)  # coalesced COO: rows, then columns, ascending
            rows.extend([row] * len(ordered))
            columns.extend(ordered)
            counts.extend(counted[column] for column in ordered)
        row_index = torch.tensor(rows, dtype=torch.int64, device=device)  # (nnz,)
        column_index = torch.tensor(columns, dtype=torch.int64, device=device)  # (nnz,)
        tf = torch.tensor(counts, dtype=torch.float32, device=device)  # (nnz,)
        if self.settings.sublinear_tf:
            tf = torch.log(tf) + 1.0
        values = tf * self.idf[column_index]  # (nnz,)
        if self.settings.norm == "l2":
            squares = torch.zeros(len(texts), dtype=torch.float32, device=device)
            norms = squares.index_add_(0, row_index, values * values).sqrt()  # (B,)
            norms[norms == 0] = 1.0  # as scikit-learn: a row with no known term stays zero
            values = values / norms[row_index]
        matrix = torch.sparse_coo_tensor(
            torch.stack([row_index, column_index]),
            values,
            (len(texts), len(self.vocabulary)),
            is_coalesced=True,
            check_invariants=False,
        )  # (B, V)
        return torch.sparse.mm(matrix, self.components.t())  # (B, dim)

    # --- the state, without pickle -------------------------------------------------------------

    def to_files(self) -> dict[str, bytes]:
        """The state as file name -> bytes; the same state always gives the same bytes."""
        info = {
            "format_version": FORMAT_VERSION,
            "encoder": self.model_id,
            "settings": self.settings.to_json(),
            "vocabulary": self.vocabulary,
            "notes": self.notes,
        }
        tensors = {
            "idf": self.idf.detach().cpu().contiguous(),
            "components": self.components.detach().cpu().contiguous(),
        }
        return {STATE_JSON: _canonical(info), STATE_TENSORS: save_tensors(tensors)}

    @classmethod
    def from_files(cls, files: Mapping[str, bytes]) -> TfidfSvdEncoder:
        """The encoder `to_files` wrote; ValueError naming the problem for anything else."""
        try:
            info = json.loads(files[STATE_JSON].decode("utf-8"))
            tensors = load_tensors(files[STATE_TENSORS])
        except KeyError as err:
            raise ValueError(f"tfidf: state file {err} is missing") from None
        except (UnicodeDecodeError, json.JSONDecodeError, SafetensorError) as err:
            raise ValueError(f"tfidf: unreadable state ({err})") from None
        if (
            not isinstance(info, dict)
            or info.get("format_version") != FORMAT_VERSION
            or info.get("encoder") != "tfidf"
        ):
            raise ValueError(f"tfidf: {STATE_JSON} is not a tfidf state of format {FORMAT_VERSION}")
        if set(tensors) != {"idf", "components"}:
            raise ValueError(
                f"tfidf: {STATE_TENSORS} must hold exactly idf and components, got {sorted(tensors)}"
            )
        if not all(t.dtype == torch.float32 for t in tensors.values()):
            raise ValueError("tfidf: idf and components must be float32")
        vocabulary = info.get("vocabulary")
        if not isinstance(vocabulary, list):
            raise ValueError("tfidf: vocabulary must be a list of terms")
        notes = info.get("notes") if isinstance(info.get("notes"), dict) else {}
        settings = TfidfSettings.from_json(info.get("settings"))
        return cls(vocabulary, tensors["idf"], tensors["components"], settings, notes)

    @classmethod
    def from_directory(cls, directory: str | Path) -> TfidfSvdEncoder:
        """Load the two state files of a directory (OSError when unreadable, ValueError when invalid)."""
        directory = Path(directory).expanduser()
        return cls.from_files({name: (directory / name).read_bytes() for name in (STATE_JSON, STATE_TENSORS)})

    @staticmethod
    def holds_state(directory: str | Path) -> bool:
        """Whether `directory` is a tfidf state directory (cheap: no file is read)."""
        return (Path(directory).expanduser() / STATE_JSON).is_file()


def _canonical(data: object) -> bytes:
    """Sorted, compact, ASCII JSON: stable bytes for the state file and its digest."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
