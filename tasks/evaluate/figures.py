"""PNG figures for reports/figures/, drawn from the same tables DVC plots render.

Drawing from the plot data files (not from the model) keeps the PNG and `dvc plots show`
in agreement by construction. Figures are built with matplotlib's object API on the Agg
canvas: no pyplot global state and no display, so it is safe in flows, workers and tests.
Labels from the data (classes, columns) go through `tasks.escape.figure`, and `to_png` draws
every text literally, so a label is never read as mathtext.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text

from tasks import escape

_DPI = 110
_MAX_LABELS = 40  # classes shown by name on confusion axes; beyond that the ticks are unreadable
_MAX_INCHES = 14  # a figure grows with its classes up to this; 10 000 classes must not make it huge
_LITERAL_TEXT = {"text.parse_math": False, "text.usetex": False}


def to_png(figure: Figure) -> bytes:
    """The figure as PNG bytes (written atomically by the caller).

    Every text is drawn literally: mathtext and TeX are off for the texts the figure holds
    and, through the rc context, for the tick labels matplotlib makes while drawing. A class
    named `$$` or `$x^2$` is then its own name, not a formula that fails to parse after
    training; the figures use no mathtext of their own, so nothing is lost. A character the
    font lacks (CJK, emoji in a label) is drawn as a box without a warning per glyph and draw.
    """
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    with rc_context(_LITERAL_TEXT), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font", category=UserWarning)
        for text in figure.findobj(Text):
            text.set_parse_math(False)
            text.set_usetex(False)
        figure.savefig(buffer, format="png", dpi=_DPI, bbox_inches="tight", metadata={"Software": None})
    return buffer.getvalue()


def _axes(title: str, width: float = 5.0, height: float = 4.0) -> tuple[Figure, object]:
    figure = Figure(figsize=(width, height))
    ax = figure.add_subplot()
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    return figure, ax


def roc(table: pd.DataFrame) -> Figure:
    figure, ax = _axes("ROC curve (test)")
    ax.plot(table["fpr"], table["tpr"], lw=2)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right")
    return figure


def precision_recall(table: pd.DataFrame) -> Figure:
    figure, ax = _axes("Precision-recall curve (test)")
    ax.step(table["recall"], table["precision"], where="post", lw=2)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.01))
    return figure


def confusion(table: pd.DataFrame) -> Figure:
    """Counts with row-normalised shading, so a rare class's errors are as visible as a common one's."""
    labels = sorted(set(table["actual"]) | set(table["predicted"]))
    counts = pd.crosstab(table["actual"], table["predicted"]).reindex(
        index=labels, columns=labels, fill_value=0
    )
    matrix = counts.to_numpy()
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = min(4 + 0.35 * len(labels), _MAX_INCHES)
    figure, ax = _axes("Confusion matrix (test)", size, size * 0.85)
    ax.grid(False)
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=ax, label="share of the actual class")
    if len(labels) <= _MAX_LABELS:
        ticks, names = np.arange(len(labels)), [escape.figure(label) for label in labels]
        ax.set_xticks(ticks, names, rotation=90)
        ax.set_yticks(ticks, names)
    if len(labels) <= 15:
        for i, j in np.ndindex(matrix.shape):
            color = "white" if shares[i, j] > 0.5 else "black"
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", color=color, fontsize=8)
    ax.set(xlabel="predicted", ylabel="actual")
    return figure


def calibration(table: pd.DataFrame) -> Figure:
    figure, ax = _axes("Calibration (test, equal-count bins)")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfectly calibrated")
    ax.plot(table["predicted"], table["observed"], marker="o", lw=2, label="model")
    ax.set(xlabel="mean predicted probability", ylabel="observed frequency", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="upper left")
    return figure


def predicted_vs_true(table: pd.DataFrame) -> Figure:
    figure, ax = _axes("Predicted vs true (test)")
    ax.scatter(table["target"], table["prediction"], s=10, alpha=0.6)
    low = float(min(table["target"].min(), table["prediction"].min()))
    high = float(max(table["target"].max(), table["prediction"].max()))
    ax.plot([low, high], [low, high], ls="--", color="grey", lw=1)
    ax.set(xlabel="true", ylabel="predicted")
    return figure


def residuals(table: pd.DataFrame) -> Figure:
    figure, ax = _axes("Residuals (test)")
    ax.scatter(table["prediction"], table["residual"], s=10, alpha=0.6)
    ax.axhline(0, ls="--", color="grey", lw=1)
    ax.set(xlabel="predicted", ylabel="true - predicted")
    return figure


def learning_curve(table: pd.DataFrame) -> Figure:
    figure, ax = _axes("Learning curve (fused head)")
    ax.plot(table["epoch"], table["train_loss"], marker=".", label="train")
    ax.plot(table["epoch"], table["val_loss"], marker=".", label="validation")
    best = table.loc[table["val_loss"].idxmin()]
    ax.axvline(best["epoch"], ls=":", color="grey", label=f"best epoch {int(best['epoch'])}")
    ax.set(xlabel="epoch", ylabel="loss")
    ax.legend()
    return figure


def importance(table: pd.DataFrame, change: str) -> Figure:
    """`change` names what a positive bar means, e.g. "drop in auc" or "rise in rmse"."""
    shown = table.head(30).iloc[::-1]  # largest at the top
    figure, ax = _axes("Permutation importance (test rows)", 6, 1.5 + 0.3 * len(shown))
    names = [f"{escape.figure(f)} ({m})" for f, m in zip(shown["feature"], shown["modality"], strict=True)]
    _bars(ax, names, shown["importance"], xerr=shown["std"], color="tab:blue", alpha=0.8)
    ax.axvline(0, color="black", lw=0.8)
    ax.set(xlabel=f"{change} when shuffled (mean +- std over repeats)")
    return figure


def contributions(table: pd.DataFrame, metric: str) -> Figure:
    """Every model's primary metric with its bootstrap interval: fused, masked, single, sklearn."""
    shown = table.iloc[::-1]
    figure, ax = _axes(f"Modality contributions (test {metric})", 6, 1.5 + 0.35 * len(shown))
    errors = np.vstack([shown["value"] - shown["low"], shown["high"] - shown["value"]])
    errors = np.where(np.isfinite(errors), np.maximum(errors, 0), 0)
    colors = [_KIND_COLORS.get(k, "tab:gray") for k in shown["kind"]]
    names = [escape.figure(model, limit=60) for model in shown["model"]]
    _bars(ax, names, shown["value"], xerr=errors, color=colors, alpha=0.85)
    ax.set(xlabel=f"{metric} (bars: 95 % bootstrap interval where computed)")
    return figure


_KIND_COLORS = {"fused": "tab:green", "masked": "tab:orange", "single": "tab:blue", "sklearn": "tab:purple"}


def _bars(ax: object, names: list[str], values: pd.Series, **style: object) -> None:
    """Horizontal bars at numbered positions, named by tick labels.

    Passing the names as bar positions would make them matplotlib categories: two names
    that escape or truncate alike would share one bar.
    """
    positions = np.arange(len(names))
    ax.barh(positions, values, **style)
    ax.set_yticks(positions, names)


def embedding(coords: np.ndarray, labels: np.ndarray, method: str, numeric: bool) -> Figure:
    """2-D projection of the fused embedding, coloured by target (class or value)."""
    figure, ax = _axes(f"Fused embedding ({method}), coloured by target", 6, 5)
    if numeric:
        points = ax.scatter(coords[:, 0], coords[:, 1], c=labels.astype(float), s=10, cmap="viridis")
        figure.colorbar(points, ax=ax, label="target")
    else:
        classes = sorted(set(labels.tolist()))
        palette = _palette(len(classes))
        for color, label in zip(palette, classes, strict=True):
            rows = labels == label
            name = escape.figure(label, legend=True)
            ax.scatter(coords[rows, 0], coords[rows, 1], s=10, color=color, label=name)
        if len(classes) <= 20:
            ax.legend(fontsize=7, markerscale=1.5, loc="best")
    ax.set(xticks=[], yticks=[])
    return figure


def block_weights(table: pd.DataFrame) -> Figure:
    """Mean attention/gate weight per block (columns) and target group (rows)."""
    pivot = table.pivot(index="label", columns="block", values="weight")
    width = min(2 + 1.2 * pivot.shape[1], _MAX_INCHES)
    figure, ax = _axes("Mean block weight per target group", width, min(1.5 + 0.35 * len(pivot), _MAX_INCHES))
    ax.grid(False)
    image = ax.imshow(pivot.to_numpy(), cmap="viridis", aspect="auto")
    figure.colorbar(image, ax=ax, label="mean weight")
    ax.set_xticks(
        np.arange(pivot.shape[1]), [escape.figure(c) for c in pivot.columns], rotation=45, ha="right"
    )
    if len(pivot) <= _MAX_LABELS:
        ax.set_yticks(np.arange(len(pivot)), [escape.figure(i) for i in pivot.index])
    return figure


def _palette(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


# Plot data file (reports/plots/<name>) -> the PNG drawn from it. Figures needing more than
# the table (metric names, projections) are drawn by name in the evaluate flow.
FROM_PLOT_DATA: dict[str, tuple[str, Callable[[pd.DataFrame], Figure]]] = {
    "roc.csv": ("roc.png", roc),
    "pr.csv": ("precision_recall.png", precision_recall),
    "confusion.csv": ("confusion.png", confusion),
    "calibration.csv": ("calibration.png", calibration),
    "pred_vs_true.csv": ("pred_vs_true.png", predicted_vs_true),
    "residuals.csv": ("residuals.png", residuals),
}
