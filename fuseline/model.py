"""`load_model` and `Model`: a bundle or a registry's current version on DataFrames in memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from tasks.features.cache import FeatureCache
from tasks.serve.served import ServedModel, load_served, machine_cache_dir

PROB = "prob_"


class Model:
    """A loaded model; its methods take raw rows as a source file holds them.

    A DataFrame needs every column the model was trained on; its id column is optional (the
    index stands in for it). File cells (images, audio) are paths relative to the model's
    roots (`data.<modality>_root` as trained, or `roots=` of load_model). Read ids and
    categories as text (`pd.read_csv(path, dtype=str)`) as `fuseline predict` does, or a
    category `007` becomes the number 7.
    """

    def __init__(self, served: ServedModel) -> None:
        self._served = served

    @property
    def version(self) -> str | None:
        """The registry version loaded, or None for a bundle directory."""
        return self._served.version

    @property
    def task(self) -> str:
        return self._served.predictor.meta.task

    @property
    def classes(self) -> list[str]:
        return list(self._served.predictor.meta.classes)

    @property
    def columns(self) -> list[str]:
        """The columns the model was trained on (what a DataFrame must have)."""
        return list(self._served.data.columns.all())

    def predict_table(self, frame: pd.DataFrame) -> pd.DataFrame:
        """`fuseline predict`'s output for these rows: the id column, prob_<class>..., prediction."""
        return self._served.predict(self._with_ids(frame), source="DataFrame")

    def predict(self, frame: pd.DataFrame) -> pd.Series:
        """The predicted label (the target's type) or value of each row, indexed as `frame`."""
        table = self.predict_table(frame)
        return pd.Series(table["prediction"].to_numpy(), index=frame.index, name=self._served.data.target)

    def predict_proba(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Each class's probability, one column per class as `fuseline predict` gives them
        (binary: the positive class only), indexed as `frame`."""
        if self.task == "regression":
            raise TypeError("a regression model predicts values, not probabilities: use predict()")
        table = self.predict_table(frame)
        probabilities = table[[c for c in table.columns if c.startswith(PROB)]]
        probabilities.columns = [c.removeprefix(PROB) for c in probabilities.columns]
        return probabilities.set_axis(frame.index)

    def _with_ids(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The frame with an id column: its own, else its index as text."""
        id_column = self._served.data.id
        if id_column in frame.columns:
            return frame
        return frame.assign(**{id_column: [str(i) for i in frame.index]})

    def __repr__(self) -> str:
        where = self.version or self._served.predictor.bundle_dir
        return f"<fuseline.Model {self.task} {where}: {', '.join(self.columns)}>"


def load_model(
    path: str | Path = "models",
    *,
    params: str | Path | None = "params.yaml",
    cache_dir: str | Path | None = None,
    roots: dict[str, str] | None = None,
) -> Model:
    """A bundle directory, or a registry's current version, ready to predict.

    `params` is read for `cache.dir` only (the feature cache: rows encoded before are read
    back, not encoded again), as `fuseline predict --params` is; `cache_dir` overrides it.
    `roots` maps a file modality to the directory its paths are relative to.
    """
    cache = FeatureCache(Path(cache_dir).resolve() if cache_dir else machine_cache_dir(params))
    return Model(load_served(path, cache, roots))


def run(params_path: str | Path = "params.yaml") -> Any:
    """The whole pipeline for a params file (`fuseline run`): the evaluate stage's summary."""
    from flows.pipeline import pipeline

    return pipeline(params_path=str(params_path))
