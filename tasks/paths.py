"""Where each stage reads and writes, in one place (dvc.yaml mirrors these paths)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

PROJECT_CODE = ("dvc.yaml", "flows", "tasks", "modelzoo")  # what a project needs to run dvc.yaml


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
        """The headline metrics (at most 30 keys): the one file dvc.yaml declares as `metrics`."""
        return self.reports / "metrics.json"

    @property
    def evaluation(self) -> Path:
        """Everything evaluate measured (metrics_report's output and more): what code reads."""
        return self.reports / "evaluation.json"

    @property
    def leaderboard(self) -> Path:
        """Every trained model's val and test metric and training seconds (`fuseline leaderboard`)."""
        return self.reports / "leaderboard.csv"

    @property
    def plots(self) -> Path:
        return self.reports / "plots"

    @property
    def train_plots(self) -> Path:
        return self.reports / "train"


def copy_project_code(checkout: Path, project: Path) -> None:
    """The code and dvc.yaml of `checkout` into `project`, a fresh project without outputs or
    caches: the end-to-end tests and bench/scale.py run the real pipeline in such copies."""
    for name in PROJECT_CODE:
        source = checkout / name
        if source.is_dir():
            shutil.copytree(source, project / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, project / name)
