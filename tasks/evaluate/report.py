"""reports/report.md: the one page a person reads first after a run.

It opens with one sentence, the verdict (tasks/evaluate/summary.py): is the final model better
than the best baseline, worse, or not detectably different? Then the leaderboard of every
trained model. Built from the numbers evaluate already wrote (evaluation.json content, plot
tables), never recomputed here, so the page cannot disagree with the files DVC tracks. The
same markdown, with figures listed instead of embedded, becomes the Prefect report artifact.
Names from the data (classes, columns, the target) are shown through `tasks.escape.code`, and
every table cell through `tasks.escape.cell`, so no label can end a code span, split a row or
add HTML.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tasks import escape
from tasks.config import DataConfig
from tasks.data.align import PRESENT, SPLIT, SPLITS, TARGET
from tasks.evaluate.evaluation import single_modalities
from tasks.evaluate.summary import BETTER, NO_DIFFERENCE, WORSE, Verdict, model_label, verdict
from tasks.scores.model_names import FUSED, MAJORITY, MEAN, SKLEARN

_MAX_CLASSES_SHOWN = 25
_MAX_FEATURES_SHOWN = 25


def data_summary(aligned: pd.DataFrame, data: DataConfig) -> dict:
    """Rows per split, target balance per split, and how often each column has a value."""
    split = aligned[SPLIT]
    rows = {s: int((split == s).sum()) for s in SPLITS}
    if data.task == "regression":
        target = aligned[TARGET].astype("float64")
        balance = {
            s: {k: float(v) for k, v in target[split == s].describe()[["mean", "std", "min", "max"]].items()}
            for s in SPLITS
        }
    else:
        counts = pd.crosstab(aligned[TARGET].astype(str), split).reindex(columns=list(SPLITS), fill_value=0)
        balance = {str(label): {s: int(counts.loc[label, s]) for s in SPLITS} for label in counts.index}
    coverage = {}
    for role in data.columns.roles():
        for column in getattr(data.columns, role):
            present = aligned[PRESENT + column].astype(bool)
            coverage[column] = {"role": role, **{s: _share(present[split == s]) for s in SPLITS}}
    return {"rows": rows, "balance": balance, "coverage": coverage}


def _share(mask: pd.Series) -> float:
    return float(mask.mean()) if len(mask) else float("nan")


@dataclass(frozen=True)
class ReportInputs:
    """Everything the page shows, already computed by the evaluate flow."""

    metrics: dict  # evaluation.json content
    data: DataConfig
    summary: dict  # data_summary()
    head: str
    sklearn: dict  # {"selected", "selected_by", "candidates"}
    contributions: pd.DataFrame  # tasks.evaluate.evaluation.contributions_table
    importance: pd.DataFrame | None = None
    block_weights: pd.DataFrame | None = None  # long form: label, block, weight, rows
    figures: list[str] = field(default_factory=list)  # PNG names under reports/figures/
    embedding_method: str = ""
    leaderboard: pd.DataFrame | None = None  # tasks.evaluate.summary.leaderboard_table


def render_report(inputs: ReportInputs, embed_figures: bool = True) -> str:
    """The markdown page; without `embed_figures` it lists figure paths (the Prefect UI cannot load them)."""
    sections = [
        _headline(inputs),
        _leaderboard_section(inputs),
        _data_section(inputs),
        _metrics_section(inputs),
        _sklearn_section(inputs),
        _ensemble_section(inputs),
        _contributions_section(inputs),
        _importance_section(inputs),
        _weights_section(inputs),
        _figures_section(inputs, embed_figures),
    ]
    return "\n\n".join(s for s in sections if s) + "\n"


# --- sections ---------------------------------------------------------------------------


def _headline(inputs: ReportInputs) -> str:
    m = inputs.metrics
    primary, intervals = m["primary_metric"], m["intervals"]
    direction = "higher is better" if intervals["higher_is_better"] else "lower is better"
    singles = {k: m["baselines"][k][primary] for k in single_modalities(m["baselines"])}
    lines = [
        "# fuseline evaluation report",
        "",
        verdict_sentence(verdict(m), inputs.sklearn.get("selected")),
        "",
        f"{m['task'].capitalize()} task on target {escape.code(inputs.data.target)}, "
        f"fusion head {escape.code(inputs.head)}. "
        f"Primary metric: **{primary}** ({direction}), on {m['rows'].get('test', 0)} test rows "
        f"(split seed {inputs.data.split.seed}). Intervals: {int(intervals['level'] * 100)} % "
        f"{intervals['method']} ({intervals['resamples']} resamples, seed {intervals['seed']}).",
        *(_positive_line(m) if m["task"] == "binary" else []),
        "",
        f"- **{_final_label(m)}: {_fmt(m['test'][primary])}** {_ci(intervals.get(FUSED))}",
    ]
    final = m["test"][primary]

    def against(prefix: str, name: str, value: float) -> str:
        """One baseline's bullet: its value and interval, and the paired interval of fused minus it."""
        return (
            f"- {prefix}{_fmt(value)} {_ci(intervals.get(name))}; fused minus it: {_signed(final - value)} "
            f"{_ci(intervals.get(f'{FUSED}_minus_{name}'), signed=True)}"
        )

    if singles:
        best = best_single(m)
        lines.append(against(f"Best single modality (chosen on val): {best} ", best, singles[best]))
    if SKLEARN in m["baselines"]:
        selected = inputs.sklearn.get("selected", "?")
        prefix = f"scikit-learn baseline ({selected}, no neural encoders): "
        lines.append(against(prefix, SKLEARN, m["baselines"][SKLEARN][primary]))
    for name in (MAJORITY, MEAN):
        if name in m["baselines"]:
            prefix = f"{model_label(name).capitalize()}, no inputs at all: "
            lines.append(against(prefix, name, m["baselines"][name][primary]))
    return "\n".join(lines)


_SAYS = {
    BETTER: "is better than",
    WORSE: "is worse than",
    NO_DIFFERENCE: "shows no detectable difference from",
}


def verdict_sentence(judged: Verdict | None, sklearn_selected: str | None = None) -> str:
    """The report's first sentence: the final model against the best baseline, with the interval.

    E.g. "The final model's accuracy 0.369 shows no detectable difference from the best
    baseline, scikit-learn (logistic_regression) (0.380): final minus it -0.011, 95 % interval
    [-0.035, +0.013]." `judged` is tasks.evaluate.summary.verdict, the same one
    metrics.json's `best_baseline` comes from.
    """
    if judged is None:
        return "There is no baseline with a score to compare the final model with."
    opening = f"The final model's {judged.metric} {_fmt(judged.final)}"
    against = (
        f"the best baseline, {_named(judged.baseline, sklearn_selected)} ({_fmt(judged.baseline_value)})"
    )
    if judged.outcome not in _SAYS:
        return f"{opening} cannot be judged against {against}: the interval of final minus it is undefined."
    return (
        f"{opening} {_SAYS[judged.outcome]} {against}: final minus it {_signed(judged.difference)}, "
        f"{judged.level * 100:g} % interval [{_signed(judged.low)}, {_signed(judged.high)}]."
    )


def _named(baseline: str, sklearn_selected: str | None) -> str:
    """A baseline as the sentence names it: `the text-only model`, `scikit-learn (ridge)`."""
    if baseline == SKLEARN:
        return f"scikit-learn ({sklearn_selected})" if sklearn_selected else "scikit-learn"
    if baseline in (MAJORITY, MEAN):
        return f"the {model_label(baseline)}"
    return f"the {baseline}-only model"


def _leaderboard_section(inputs: ReportInputs) -> str:
    """Every trained model, best test score first: what `fuseline leaderboard` prints."""
    board = inputs.leaderboard
    if board is None or board.empty:
        return ""
    primary = inputs.metrics["primary_metric"]
    body = [
        [escape.code(r.model), r.role, _maybe_number(r.weight, 2), _maybe_number(r.val, 3),
         _maybe_number(r.test, 3), _maybe_number(r.seconds, 1)]
        for r in board.itertuples(index=False)
    ]  # fmt: skip
    return "\n".join(
        [
            "## Leaderboard",
            "",
            f"Every model trained for this run, best test {primary} first. The final model and its "
            f"ensemble weights were chosen on val; test was not used to choose. Seconds: wall time to "
            "train (the final model: its members' together; the sklearn baseline is fit by evaluate, "
            "whose log times it, so that a rerun writes the same report).",
            "",
            _table(["model", "what", "weight", f"val {primary}", f"test {primary}", "train seconds"], body),
        ]
    )


def _data_section(inputs: ReportInputs) -> str:
    summary = inputs.summary
    rows = summary["rows"]
    lines = [
        "## Data",
        "",
        _table(["split", *SPLITS, "total"], [["rows", *rows.values(), sum(rows.values())]]),
    ]
    if inputs.data.task == "regression":
        header = ["target", *SPLITS]
        body = [
            [stat, *(_fmt(summary["balance"][s][stat]) for s in SPLITS)]
            for stat in ("mean", "std", "min", "max")
        ]
        lines += ["", "Target distribution:", "", _table(header, body)]
    else:
        balance = summary["balance"]
        labels = sorted(balance, key=lambda c: -sum(balance[c].values()))
        body = [[escape.code(c), *(balance[c][s] for s in SPLITS)] for c in labels[:_MAX_CLASSES_SHOWN]]
        more = len(labels) - _MAX_CLASSES_SHOWN
        lines += ["", f"Class balance ({len(labels)} classes):", "", _table(["class", *SPLITS], body)]
        if more > 0:
            lines.append(f"\n({more} smaller classes not shown.)")
    coverage = summary["coverage"]
    body = [[escape.code(c), v["role"], *(_pct(v[s]) for s in SPLITS)] for c, v in coverage.items()]
    lines += [
        "",
        "Modality coverage (rows with a usable value):",
        "",
        _table(["column", "role", *SPLITS], body),
    ]
    return "\n".join(lines)


def _metrics_section(inputs: ReportInputs) -> str:
    m = inputs.metrics
    primary, intervals = m["primary_metric"], m["intervals"]
    names = list(m["test"])
    header = ["model", f"{primary} (95 % CI)", *(n for n in names if n != primary)]
    body = [_metric_row("**fused**", m["test"], intervals.get(FUSED), primary, names)]
    later = {SKLEARN: 1, MAJORITY: 2, MEAN: 2}  # the trained models first, then sklearn, then no inputs
    for name, values in sorted(m["baselines"].items(), key=lambda item: later.get(item[0], 0)):
        label = model_label(name, inputs.sklearn.get("selected", "?"))
        body.append(_metric_row(label, values, intervals.get(name), primary, names))
    return "\n".join(["## Test metrics", "", _table(header, body)])


def _metric_row(label: str, values: dict, interval: dict | None, primary: str, names: list[str]) -> list[str]:
    return [
        label,
        f"{_fmt(values[primary])} {_ci(interval)}",
        *(_fmt(values[n]) for n in names if n != primary),
    ]


def _sklearn_section(inputs: ReportInputs) -> str:
    candidates = inputs.sklearn.get("candidates") or {}
    if not candidates:
        return ""
    primary = inputs.metrics["primary_metric"]
    body = []
    for name, result in candidates.items():
        settings = (
            ", ".join(f"{k}={v:g}" for k, v in result.items() if k not in ("val", "test")) or "defaults"
        )
        chosen = "yes" if name == inputs.sklearn.get("selected") else ""
        body.append([name, settings, _fmt(result["val"][primary]), _fmt(result["test"][primary]), chosen])
    return "\n".join(
        [
            "## Baselines a user would otherwise use",
            "",
            "scikit-learn on the raw aligned table, same train/val/test rows: TF-IDF (1-2 grams) of the "
            "text columns, one-hot categoricals and scaled numerics into a linear model (regularisation "
            "tuned on val), and the same columns (text reduced by SVD) into histogram gradient boosting. "
            f"The candidate with the better {inputs.sklearn.get('selected_by', 'validation score')} is the "
            "reported baseline; its test score is never used for the choice. It cannot see images."
            + _sample_note(inputs.sklearn),
            "",
            _table(["candidate", "settings", f"val {primary}", f"test {primary}", "selected"], body),
        ]
    )


def _sample_note(sklearn: dict) -> str:
    """Say so when the baseline saw a sample of train (`evaluate.baseline_max_rows`)."""
    used, available = sklearn.get("train_rows", 0), sklearn.get("train_rows_available", 0)
    if not used or used >= available:
        return ""
    return (
        f" It was fitted on a seeded sample of {used:,} of the {available:,} train rows "
        "(`evaluate.baseline_max_rows`); the neural models trained on all of them."
    )


def _ensemble_section(inputs: ReportInputs) -> str:
    """What train tried (the preset's members), how long each took, its val score, and the weights."""
    ensemble = inputs.metrics.get("ensemble")
    if not ensemble:
        return ""
    primary = inputs.metrics["primary_metric"]
    weights = ensemble.get("members", {})
    body = [
        [t["name"], t.get("kind", ""), t.get("status", ""), _maybe(t.get("seconds")),
         _maybe(t.get("val")), _fmt(weights.get(t["name"], 0.0))]
        for t in ensemble.get("tried", [])
    ]  # fmt: skip
    return "\n".join(
        [
            "## Models tried and the ensemble",
            "",
            f"Every model train fitted, and {_made_by(ensemble, primary)} "
            f"(ensemble on val: {_fmt(ensemble.get('val', float('nan')))}). Test was not used to choose."
            + _combined_note(ensemble)
            + _refit_note(ensemble),
            "",
            _table(["model", "kind", "status", "seconds", f"val {primary}", "weight"], body),
        ]
    )


def _made_by(ensemble: dict, primary: str) -> str:
    """How the ensemble was made: weights chosen on the metric, or a pool fitted by log loss."""
    if "stacker" in ensemble:
        return f"the ensemble of them, {ensemble.get('method', 'stacking')}, scored on val {primary}"
    return f"the ensemble of them chosen by {ensemble.get('method', 'greedy selection')} on val {primary}"


def _combined_note(ensemble: dict) -> str:
    """How `train.combine` chose between Caruana's weights and the stacker, when it was asked to."""
    if "combined_by" not in ensemble:
        return ""
    oof = ensemble.get("out_of_fold")
    scores = (
        f" Out of fold on val ({oof['folds']} folds, {oof['metric']}): caruana {_fmt(oof['caruana'])}, "
        f"stacking {_fmt(oof['stacking'])}."
        if oof
        else ""
    )
    shares = " Each weight is the member's share of the pool's total weight." if "stacker" in ensemble else ""
    return f" Combined by {ensemble['combined_by']}.{scores}{shares}"


def _refit_note(ensemble: dict) -> str:
    """Which members learned the val rows after the selection (`train.refit`), and which did not."""
    refit = ensemble.get("refit") or {}
    kept = refit.get("kept", {})
    if not refit.get("members") and not kept:
        return ""
    done = (
        f" After the selection, {', '.join(refit['members'])} were fitted again on the {refit['rows']:,} "
        "train and val rows for the epochs (rounds) val chose, weights unchanged (`train.refit`); "
        "the val scores above are from before."
        if refit.get("members")
        else ""
    )
    return done + "".join(f" {name} was not refit ({why})." for name, why in sorted(kept.items()))


def _contributions_section(inputs: ReportInputs) -> str:
    m = inputs.metrics
    primary, intervals = m["primary_metric"], m["intervals"]
    table = inputs.contributions
    body = []
    for row in table.itertuples(index=False):
        delta = intervals.get(f"{FUSED}_minus_{row.key}")
        difference = (
            ""
            if row.kind == "fused"
            else (f"{_signed(m['test'][primary] - row.value)} {_ci(delta, signed=True)}")
        )
        body.append([row.model, f"{_fmt(row.value)} {_ci({'low': row.low, 'high': row.high})}", difference])
    return "\n".join(
        [
            "## What each modality contributes",
            "",
            "*Fused without X*: the trained fused model with modality X marked absent on every test row "
            "(the head falls back to its learned 'missing' embedding). *X only*: the same head trained on "
            "modality X alone. The last column is the fused model's lead, with a paired bootstrap interval.",
            "",
            _table(["model", f"{primary} (95 % CI)", "fused minus this (95 % CI)"], body),
            *_untrained_note(m.get("ablation_untrained", [])),
        ]
    )


def _untrained_note(modalities: list[str]) -> list[str]:
    """Masking a modality every train row had asks an embedding that never learned anything."""
    if not modalities:
        return []
    names = ", ".join(modalities)
    return [
        "",
        f"**Unreliable:** *fused without* {names}: every train row has {names} and "
        "`train.modality_dropout` is 0, so the head's 'missing' embedding for it never trained; "
        "the row measures an untrained vector, not the model without that input. Set "
        "`train.modality_dropout` (e.g. 0.1) to train it.",
    ]


def _importance_section(inputs: ReportInputs) -> str:
    table = inputs.importance
    if table is None or table.empty:
        return ""
    primary = inputs.metrics["primary_metric"]
    change = worsening(primary, inputs.metrics["intervals"]["higher_is_better"])
    repeats = int(table["repeats"].iloc[0])
    body = [
        [escape.code(r.feature), r.modality, f"{_signed(r.importance)} ± {_fmt(r.std)}"]
        for r in table.head(_MAX_FEATURES_SHOWN).itertuples(index=False)
    ]
    return "\n".join(
        [
            "## Feature importance",
            "",
            f"Permutation importance on the test rows: the {change} when one column's values are "
            f"shuffled across rows ({repeats} seeded repeats, mean ± std). Text and image columns are "
            "shuffled whole. Near zero: the fused model does not use the column.",
            "",
            _table(["column", "modality", change], body),
        ]
    )


def best_single(metrics: dict) -> str:
    """The single-modality model with the best val score (test score only for reports without val).

    Picking by test would choose on the very rows the fused-minus-best comparison is read on.
    """
    primary, higher = metrics["primary_metric"], metrics["intervals"]["higher_is_better"]
    names = single_modalities(metrics["baselines"])
    val = metrics.get("val", {})
    score = {k: val[k] if k in val else metrics["baselines"][k][primary] for k in names}
    usable = [k for k in names if score[k] == score[k]] or names  # NaN never wins
    return max(usable, key=score.get) if higher else min(usable, key=score.get)


def worsening(metric: str, higher_is_better: bool) -> str:
    """How a permutation importance is read: a drop in a score, a rise in an error."""
    return f"drop in {metric}" if higher_is_better else f"rise in {metric}"


def _weights_section(inputs: ReportInputs) -> str:
    table = inputs.block_weights
    if table is None or table.empty:
        return "\n".join(
            [
                "## Attention / gate weights",
                "",
                f"The {escape.code(inputs.head)} head has no per-block weights "
                "(its `block_weights` is None), so there is nothing to show here.",
            ]
        )
    pivot = table.pivot(index="label", columns="block", values="weight")
    body = [
        [escape.code(label), *(_fmt(v) for v in row)]
        for label, row in zip(pivot.index, pivot.to_numpy(), strict=True)
    ]
    return "\n".join(
        [
            "## Attention / gate weights",
            "",
            f"Mean weight the {escape.code(inputs.head)} head gives each input block, per target group "
            "(test rows).",
            "",
            _table(["group", *map(escape.code, pivot.columns)], body),
        ]
    )


def _figures_section(inputs: ReportInputs, embed: bool) -> str:
    if not inputs.figures:
        return ""
    lines = ["## Figures", ""]
    for name in inputs.figures:
        title = _FIGURE_TITLES.get(name, name.removesuffix(".png").replace("_", " "))
        if name == "embedding.png" and inputs.embedding_method:
            title += f" ({inputs.embedding_method})"
        lines.append(
            f"### {title}\n\n![{title}](figures/{name})\n"
            if embed
            else f"- {title}: `reports/figures/{name}`"
        )
    return "\n".join(lines)


_FIGURE_TITLES = {
    "contributions.png": "Modality contributions",
    "importance.png": "Permutation importance",
    "learning_curve.png": "Learning curve",
    "roc.png": "ROC curve",
    "precision_recall.png": "Precision-recall curve",
    "confusion.png": "Confusion matrix",
    "calibration.png": "Calibration",
    "pred_vs_true.png": "Predicted vs true",
    "residuals.png": "Residuals",
    "embedding.png": "Fused embedding",
    "block_weights.png": "Block weights per target group",
}


# --- formatting -------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[object]]) -> str:
    """A GFM table; every cell escaped whole, so a `|` from a label cannot add a column."""
    lines = ["| " + " | ".join(map(escape.cell, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(escape.cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def _fmt(value: float) -> str:
    return "n/a" if value is None or not math.isfinite(float(value)) else f"{float(value):.3f}"


def _signed(value: float) -> str:
    return "n/a" if not np.isfinite(value) else f"{value:+.3f}"


def _pct(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{100 * value:.0f} %"


def _ci(interval: dict | None, signed: bool = False) -> str:
    if not interval or not all(math.isfinite(float(interval[k])) for k in ("low", "high")):
        return ""
    show = _signed if signed else _fmt
    return f"[{show(interval['low'])}, {show(interval['high'])}]"


def _final_label(metrics: dict) -> str:
    """What `test` measures: the ensemble chosen on val, or the fused head when it stands alone."""
    members = metrics.get("ensemble", {}).get("members", {})
    if not members or set(members) == {FUSED}:
        return "Fused model"
    shown = ", ".join(f"{name} {weight:.2f}" for name, weight in sorted(members.items(), key=lambda i: -i[1]))
    how = "stacked on val" if "stacker" in metrics.get("ensemble", {}) else "ensemble chosen on val"
    return f"Final model ({how}: {shown})"


def _maybe(value: float | None) -> str:
    return "–" if value is None else _fmt(value)


def _maybe_number(value: float, decimals: int) -> str:
    """A leaderboard cell: blank where the model has no such number (no ensemble weight)."""
    return "" if value is None or not math.isfinite(float(value)) else f"{float(value):.{decimals}f}"


def _positive_line(metrics: dict) -> list[str]:
    """Which label AUC, F1 and prob_<label> are about; without it a reader must guess."""
    positive = metrics.get("positive_class")
    if positive is None:
        return []
    return [
        f"Positive class: **{escape.code(positive)}** (AUC, F1 and the {escape.code(f'prob_{positive}')} "
        "column are about it; "
        "set `data.positive_class` to choose another)."
    ]
