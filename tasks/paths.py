"""Where each stage reads and writes, in one place (dvc.yaml mirrors these paths)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    """The project's output tree, relative to the directory a stage runs in."""

    root: Path = Path(".")

    @property
    def resolved_params(self) -> Path:
        """params.yaml with every default written out: what DVC's stages track (tasks/dvc_params.py)."""
        return self.root / "data" / "resolved" / "params.yaml"

    @property
    def links(self) -> Path:
        """Symlinks to the sources and media roots, so dvc.yaml names fixed paths."""
        return self.root / "data" / "links"

    @property
    def raw(self) -> Path:
        return self.root / "data" / "raw"

    @property
    def aligned_dir(self) -> Path:
        return self.root / "data" / "aligned"

    @property
    def aligned(self) -> Path:
        return self.aligned_dir / "aligned.parquet"

    @property
    def align_summary(self) -> Path:
        return self.aligned_dir / "summary.json"

    @property
    def features(self) -> Path:
        return self.root / "data" / "features"

    def feature_file(self, modality: str) -> Path:
        return self.features / f"{modality}.parquet"

    def fitted(self, modality: str) -> Path:
        """An encoder state fitted on the train rows (tfidf), or a note that the modality has none."""
        return self.features / f"{modality}.fitted"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def metrics(self) -> Path:
        return self.reports / "metrics.json"

    @property
    def plots(self) -> Path:
        return self.reports / "plots"

    @property
    def train_plots(self) -> Path:
        return self.reports / "train"
