"""The one typed configuration, read from params.yaml at the edge and passed down.

Everything is validated up front (unknown keys, wrong types, impossible values) so that a
typo fails in a second with the key's path instead of an hour into a run.

Each embedded modality's keys (`data.columns.<name>`, `data.<name>_root`, `data.on_bad_<name>`,
`encoders.<name>`) are declared by its plug-in (tasks/modalities), built-in or installed, and
added to the models here from the registry: this module names no modality.
"""

from __future__ import annotations

import difflib
import functools
import math
import os
import re
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from tasks import modalities
from tasks.cluster_address import address_problem
from tasks.errors import ConfigError
from tasks.pathcheck import open_regular
from tasks.schema import reserved_reason
from tasks.scores.metric_names import AUTO, MetricName, metric_problem, resolve_metric
from tasks.strict import Strict

# YAML aliases let a few lines expand to gigabytes ("billion laughs"); params never need many.
MAX_YAML_ALIASES = 100
# The plug-ins that loaded; one whose entry point is broken is reported when params are loaded.
_PLUGINS = modalities.loaded()


class SourceConfig(Strict):
    """One input table; all tables are joined on `data.id`."""

    path: str
    format: Literal["csv", "parquet", "jsonl"] | None = None


class _ColumnRoles(Strict):
    categorical: list[str] = []
    numeric: list[str] = []

    @classmethod
    def roles(cls) -> tuple[str, ...]:
        """categorical, numeric, then one role per embedded modality, in declaration order."""
        return tuple(cls.model_fields)

    def all(self) -> list[str]:
        return [column for role in self.roles() for column in getattr(self, role)]

    def read_as_text(self) -> list[str]:
        """Every column but the numeric ones: read from CSV as the strings in the file (`007` stays)."""
        return [column for role in self.roles() if role != "numeric" for column in getattr(self, role)]

    def role_of(self, column: str) -> str:
        return next(role for role in self.roles() if column in getattr(self, role))


ColumnsConfig = create_model(
    "ColumnsConfig",
    __base__=_ColumnRoles,
    __module__=__name__,
    __doc__="""Column roles: categorical, numeric, then one per embedded modality (`data.columns.<name>`).
    Any list may be empty: the pipeline uses the modalities that exist.""",
    **{plugin.name: (list[str], []) for plugin in _PLUGINS},  # type: ignore[call-overload]
)


class FractionsConfig(Strict):
    train: float = Field(0.7, gt=0, lt=1)
    val: float = Field(0.15, gt=0, lt=1)
    test: float = Field(0.15, gt=0, lt=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> FractionsConfig:
        total = self.train + self.val + self.test
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(f"train + val + test must sum to 1, got {total:g}")
        return self


class SplitConfig(Strict):
    """How rows are split. `method: hash` is stable: a row's split depends on its id and the
    seed alone, so rows added later never move an existing row (what scheduled retraining
    needs to compare models on the same rows). `stratified` draws an exact stratified split,
    best for small static data, but redraws every row when rows are added."""

    column: str | None = None
    fractions: FractionsConfig = FractionsConfig()
    seed: int = Field(42, ge=0, le=2**32 - 1)
    method: Literal["stratified", "hash"] = "stratified"
    group: str | None = None  # rows sharing a value here (a product, a person) share a split; needs hash
    dedupe: bool = False  # refuse, rather than warn about, a text or file found in more than one split

    @model_validator(mode="after")
    def _group_needs_hash(self) -> SplitConfig:
        if self.group is not None and self.method != "hash":
            raise ValueError("group: keeping groups together needs method: hash")
        return self

    def source_columns(self) -> list[str]:
        """Columns the split reads from the sources besides the features: split column, group."""
        return [c for c in (self.column, self.group) if c is not None]

    @property
    def stable(self) -> bool:
        """Whether adding rows leaves every existing row in its split."""
        return self.method == "hash"


class DemoConfig(Strict):
    """When set, ingest first renders the synthetic demo dataset at the source path."""

    rows: int = Field(2000, ge=50)
    seed: int = Field(7, ge=0, le=2**32 - 1)


class _DataKeys(Strict):
    sources: list[SourceConfig] = Field(min_length=1)
    id: str
    target: str
    task: Literal["binary", "multiclass", "multilabel", "regression"]  # multilabel: list-valued target
    # binary: the label that counts as positive (AUC, F1, prob_<label>); default: the one sorting second
    positive_class: str | None = None
    columns: ColumnsConfig = ColumnsConfig()
    split: SplitConfig = SplitConfig()
    demo: DemoConfig | None = None
    # What a dirty cell costs: `missing` keeps the run going and counts it in the align summary.
    on_bad_value: Literal["error", "missing"] = "missing"  # numeric cell that is not a finite number

    @model_validator(mode="after")
    def _roles_are_disjoint(self) -> _DataKeys:
        if self.target == self.id:
            raise ValueError(f"column {self.id!r} is both id and target")
        seen: dict[str, str] = {self.id: "id", self.target: "target"}
        if self.split.column is not None:
            if self.split.column in seen:
                raise ValueError(
                    f"column {self.split.column!r} is both {seen[self.split.column]} and split.column"
                )
            seen[self.split.column] = "split.column"
        for role in ColumnsConfig.roles():
            for column in getattr(self.columns, role):
                if column in seen:
                    raise ValueError(f"column {column!r} is both {seen[column]} and {role}")
                reason = reserved_reason(column)
                if reason is not None:
                    raise ValueError(f"columns.{role}: column {column!r}: {reason}; rename it in the source")
                seen[column] = role
        if not self.columns.all():
            raise ValueError("columns: declare at least one feature column")
        if self.positive_class is not None and self.task != "binary":
            raise ValueError(f"positive_class: only a binary task has one, this task is {self.task!r}")
        return self


_CLASHES: list[str] = []  # data keys a plug-in declares that another already has


def _modality_data_keys() -> dict[str, Any]:
    """What the plug-ins add under `data` (file modalities: `<name>_root`, `on_bad_<name>`).

    A key another one already has is left out and reported when params are loaded.
    """
    keys: dict[str, Any] = {}
    for plugin in _PLUGINS:
        for key, spec in plugin.data_keys().items():
            if key in _DataKeys.model_fields or key in keys:
                _CLASHES.append(f"modality plug-in {plugin.name!r} declares data.{key}, a key already taken")
            else:
                keys[key] = spec
    return keys


DataConfig = create_model(
    "DataConfig",
    __base__=_DataKeys,
    __module__=__name__,
    __doc__="`data`: the sources, their columns' roles and each file modality's root and bad-file policy.",
    **_modality_data_keys(),
)


EncodersConfig = create_model(
    "EncodersConfig",
    __base__=Strict,
    __module__=__name__,
    __doc__="`encoders`: one section per embedded modality, as its plug-in declares it (`encoder_config`).",
    **{plugin.name: (plugin.encoder_config, plugin.encoder_config()) for plugin in _PLUGINS},  # type: ignore[call-overload]
)


class FusionConfig(BaseModel):
    """`head` names a registered fusion head; the other keys are that head's own options."""

    model_config = ConfigDict(extra="allow", frozen=True)

    head: str = "concat"

    @model_validator(mode="after")
    def _options_fit_head(self) -> FusionConfig:
        self.head_config()  # raises with the offending key
        return self

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def head_config(self) -> BaseModel:
        """The head's own Config, validated from the keys beside `head`.

        Keys that only other registered heads declare (say `rank` or `wide` under
        `head: concat`) are set aside rather than refused: params.yaml can then carry every
        head's options, and `dvc exp run -S fusion.head=...` switches heads without edits.
        A key that no head declares is still an unknown key, so typos fail as before.
        """
        from modelzoo.registry import lookup, names

        try:
            head_cls = lookup("head", self.head)
        except KeyError as err:
            raise ValueError(str(err.args[0])) from None
        own = set(head_cls.Config.model_fields)
        others = {key for name in names("head") for key in lookup("head", name).Config.model_fields}
        options = {k: v for k, v in self.options().items() if k in own or k not in others}
        try:
            return head_cls.Config.model_validate(options, strict=True)
        except ValidationError as err:
            first = err.errors()[0]
            key = ".".join(str(part) for part in first["loc"])
            message = f"{first['msg']} (for head {self.head!r})"
            if first["type"] == "extra_forbidden":
                close = difflib.get_close_matches(key, [*own, *others, "head"], n=1, cutoff=0.6)
                hint = f"; did you mean 'fusion.{close[0]}'?" if close else ""
                message = f"unknown key (for head {self.head!r}){hint}"
            raise ValueError(f"{key}: {message}") from None


class TrainConfig(Strict):
    epochs: int = Field(30, ge=1)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(256, ge=1)
    weight_decay: float = Field(0.01, ge=0)
    patience: int = Field(5, ge=1)
    seed: int = Field(42, ge=0, le=2**32 - 1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    class_weight: Literal["balanced"] | None = None  # classification: reweight rare classes/labels
    schedule: Literal["constant", "cosine", "onecycle"] = "constant"  # stepped per batch
    warmup: float = Field(0.0, ge=0, lt=1)  # share of steps warming up (cosine); onecycle's pct_start
    grad_clip: float | None = Field(None, gt=0)  # max global gradient norm
    modality_dropout: float = Field(0.0, ge=0, lt=1)  # chance a row's modality is hidden in training
    # fast: one fused head (plus the single-modality and scikit-learn baselines), ensembled on val.
    # best: also other heads and seeds, a hyperparameter search and, when time allows, fine-tuned
    # encoders.
    preset: Literal["fast", "best"] = "fast"
    time_limit: float | None = Field(None, gt=0)  # seconds for all of train; members stop cleanly
    search_trials: int = Field(30, ge=1)  # best: Optuna trials per searched model, at most
    search_share: float = Field(0.3, gt=0, le=1)  # best + time_limit: share of the time left to search
    ensemble: bool = True  # greedy ensemble selection (Caruana 2004) on val over every trained model
    # how the ensemble's members are made one: caruana (weights chosen greedily on val), stacking
    # (a log-linear pool fitted on val) or auto (whichever scores higher out of fold on val)
    combine: Literal["caruana", "stacking", "auto"] = "caruana"
    # after the selection, fit each kept member again on train + val for the epochs (rounds) val
    # chose, weights unchanged (tasks/train/refit.py); false: the members stay fitted on train alone
    refit: bool = True


@functools.cache
def _time_zones() -> frozenset[str]:
    """The IANA names of this machine's time zone database (a directory walk: once per process)."""
    from zoneinfo import available_timezones

    return frozenset(available_timezones())


class ScheduleConfig(Strict):
    """Scheduled retraining (`fuseline serve`): when it runs and when its model replaces the current one.

    `tolerance` is in units of `evaluate.metric` (by default auc, accuracy or rmse): a new model
    is promoted unless it is worse than the promoted one by more than this, and significantly so
    (the paired interval on the rows neither trained on lies below zero): retraining on fresh
    data is not blocked by noise-level differences (tasks/serve/promotion.py `decide`).
    """

    cron: str = "0 3 * * *"
    timezone: str = "UTC"
    tolerance: float = Field(0.0, ge=0)
    registry: str = "registry"  # promoted bundles: <registry>/v0001/, ... and <registry>/current.json
    pull: bool = False  # `dvc pull` before each scheduled run (needs a DVC remote)

    @field_validator("cron")
    @classmethod
    def _five_fields(cls, value: str) -> str:
        from tasks.cron import cron_problem  # every value in range, and a day that occurs

        problem = cron_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        # The names Prefect's schedules accept; ZoneInfo alone also opens 'posixrules' or
        # 'right/UTC', which Prefect refuses when `fuseline serve` builds the deployment.
        if value not in _time_zones():
            raise ValueError(f"unknown time zone {value!r} (use an IANA name like 'Europe/Berlin')")
        return value

    @field_validator("registry")
    @classmethod
    def _outside_what_it_copies(cls, value: str) -> str:
        """Promotion copies models/ into the registry: a registry inside models/ would copy itself."""
        from tasks.paths import Layout

        if not value.strip():
            raise ValueError("the registry path is empty")
        models = os.path.normpath(Layout().models)
        written = os.path.normpath(value)
        if written == models or written.startswith(models + os.sep):
            raise ValueError(
                f"{value!r} lies inside {models}/, which every promotion copies into the registry; "
                "name a directory outside it, e.g. 'registry'"
            )
        return value


class DriftThresholds(Strict):
    """When a drift check counts as drift: its test is significant AND its effect is large enough.

    Both are needed. A test alone flags trivial shifts once the batch has thousands of rows;
    an effect size alone flags noise when it has fifty. So a check is drift when
    `p < alpha` and its effect reaches the threshold of its kind. The p-values of one run's
    checks are adjusted together (Holm), so `alpha` is the chance that a run over data with
    no drift reports drift in any column. The effect thresholds:

    - `psi`: population stability index of a numeric or categorical column, or of the model's
      predicted classes or scores (0.1 is commonly read as a slight shift, 0.2 as a significant one);
    - `auc`: ROC AUC of a classifier telling batch embeddings from reference ones (0.5: it cannot);
    - `missing`: change in a column's share of missing values (0.1 = ten percentage points);
    - `unseen`: share of batch rows with a category the reference never had, beyond the share
      expected from the reference's own long tail (Good-Turing);
    - `performance`: once labels arrive, how far the realized primary metric may fall below
      what CBPE expected of the same rows (below the held-out metric for regression), in the
      metric's own units, before a significant shortfall is drift: a concept change.
    """

    alpha: float = Field(0.01, gt=0, lt=0.5)  # false alarms per run (Holm over the run's checks)
    psi: float = Field(0.2, gt=0)
    auc: float = Field(0.55, gt=0.5, lt=1)
    missing: float = Field(0.1, gt=0, le=1)
    unseen: float = Field(0.05, gt=0, le=1)
    performance: float = Field(0.05, gt=0)


class MonitorConfig(Strict):
    """Drift monitoring (`fuseline monitor`, and its deployment under `fuseline serve`).

    The scheduled run watches the served model (the registry's promoted version): its own
    train rows (its bundle's lineage) against the source rows it has never seen, whenever it
    runs relative to the retrain (tasks/monitor/rows.py).
    """

    cron: str = "0 2 * * *"
    timezone: str = "UTC"
    threshold: DriftThresholds = DriftThresholds()
    max_rows: int = Field(5000, ge=50)  # rows sampled (seeded) from each side; bounds encoding and tests
    seed: int = Field(0, ge=0, le=2**32 - 1)
    retrain_on_drift: bool = False  # run the fuseline-retrain/scheduled-retrain deployment on drift
    output: str = "reports/monitor"  # drift.json, drift.md, drift.png

    @field_validator("cron")
    @classmethod
    def _five_fields(cls, value: str) -> str:
        return ScheduleConfig._five_fields(value)

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        return ScheduleConfig._known_timezone(value)


class EvaluateConfig(Strict):
    """The metric every choice is made on, and bounds on what the scikit-learn models cost at scale."""

    # Above this many train rows the scikit-learn baseline (evaluate) and linear member (train)
    # fit on a seeded sample of them: TF-IDF + boosted trees on a million rows would take longer
    # than the whole neural run, and the report says when a sample was used.
    baseline_max_rows: int = Field(100_000, ge=100)
    # Early stopping and the best epoch, the ensemble, the scikit-learn tuning, promotion, the
    # report's headline. `auto`: the task's default (tasks/scores/metric_names.py) with early
    # stopping on val loss; a metric that does not fit data.task fails at load (Params).
    metric: MetricName = "auto"

    def chosen(self, task: str) -> str:
        """The metric selections use for `task`: `metric`, or the task's default under `auto`."""
        return resolve_metric(task, self.metric)

    def epoch_metric(self, task: str) -> str | None:
        """What picks a training loop's best epoch: the chosen metric, or None (val loss) under `auto`."""
        return None if self.metric == AUTO else self.chosen(task)


class RuntimeConfig(Strict):
    """Where extraction and batch prediction run: this process, or chunks on a Dask/Ray cluster.

    With no `address`, dask and ray start a local cluster of `workers` processes for the run.
    """

    task_runner: Literal["local", "dask", "ray"] = "local"
    address: str | None = None  # e.g. tcp://scheduler:8786 (dask) or ray://head:10001 (ray)
    workers: int = Field(2, ge=1)  # chunks are `cache.chunk_rows` rows (prediction) or contents (extraction)

    @model_validator(mode="after")
    def _address_fits_runner(self) -> RuntimeConfig:
        """A malformed address fails here; whether it answers, `fuseline check` finds out."""
        if self.address is None:
            return self
        problem = address_problem(self.task_runner, self.address)
        if problem is not None:
            raise ValueError(f"address: {problem}")
        return self


class CacheConfig(Strict):
    """The row-level embedding cache (tasks/features/cache): every distinct text or image is encoded once.

    `dir` and `chunk_rows` do not change what extraction produces, only where entries live
    and how much work one task (and one shard) holds, so no DVC stage watches them.
    """

    dir: str = ".cache/features"  # relative to where stages run (the project root)
    chunk_rows: int = Field(1024, ge=1)  # distinct contents encoded per task and committed per shard
    # How feature files store embeddings. float16 halves their size on disk and what train and
    # evaluate map of them (vectors are cast back to float32 per batch); the cache keeps
    # float32, so switching costs no re-encoding. Unlike the keys above it changes the
    # features, so the extract stages watch it.
    dtype: Literal["float32", "float16"] = "float32"


class Params(Strict):
    """The whole params.yaml."""

    data: DataConfig
    encoders: EncodersConfig = EncodersConfig()
    fusion: FusionConfig = FusionConfig()
    train: TrainConfig = TrainConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    monitor: MonitorConfig = MonitorConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    cache: CacheConfig = CacheConfig()

    @field_validator("fusion", mode="before")
    @classmethod
    def _fusion_from_mapping(cls, value: Any) -> Any:
        # strict mode refuses a plain dict for a non-strict sub-model; build it here instead.
        return FusionConfig.model_validate(value) if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _class_weight_needs_classes(self) -> Params:
        if self.train.class_weight is not None and self.data.task == "regression":
            raise ValueError("train.class_weight: only applies to classification, not regression")
        return self

    @model_validator(mode="after")
    def _metric_fits_task(self) -> Params:
        problem = metric_problem(self.data.task, self.evaluate.metric)
        if problem is not None:
            raise ValueError(f"evaluate.metric: {problem}")
        return self


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-3` and `1.5e3` as floats, as YAML 1.2 (and DVC) do.

    YAML 1.1's float needs a dot and a signed exponent (`1.0e-3`), so a learning rate written
    `1e-3` would otherwise arrive as the string "1e-3" and fail validation.
    """


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _unique_keys(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    """Refuse a key written twice: PyYAML would silently keep the last one."""
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_keys)


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; any problem becomes a ConfigError naming the key."""
    path = Path(path)
    try:
        text = _read_params_text(path)
        _refuse_alias_bombs(text, path)
        raw = yaml.load(text, Loader=_Loader)  # a SafeLoader: builds no objects
    except (UnicodeDecodeError, ValueError) as err:
        raise ConfigError(f"{path}: not a UTF-8 text file ({err})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return params_from_dict(raw, source=str(path))


def _read_params_text(path: Path) -> str:
    """The file's text, read once and only from a regular file: /dev/zero would never end, and
    a FIFO would block the next command that reads params.yaml (predict reads it twice)."""
    with open_regular(path, ConfigError, "params") as handle:
        return handle.read().decode("utf-8")


def _refuse_alias_bombs(text: str, path: Path) -> None:
    """Count aliases in the event stream, which costs time linear in the file, before building.

    Each alias of a list that itself holds aliases multiplies the structure's size, so ten
    short lines can expand to 10**9 items. Refusing files with many aliases protects this
    loader; DVC reads params.yaml with its own loader, which is why `fuseline check` runs
    before `dvc repro` in `make demo` and the scheduled path.
    """
    aliases = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > MAX_YAML_ALIASES:
                raise ConfigError(
                    f"{path}: more than {MAX_YAML_ALIASES} YAML aliases (*name); refusing a file that "
                    "can expand without bound. Write the values out instead."
                )


def params_from_dict(raw: dict[str, Any], source: str = "params") -> Params:
    """Validate an already-parsed mapping (tests and `dvc exp -S` overrides come this way)."""
    problem = modalities.plugin_problem() or next(iter(_CLASHES), None)
    if problem is not None:  # its keys would be refused as unknown: say why instead
        raise ConfigError(f"{source}: {problem}")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_describe(err, source)) from None


def _describe(err: ValidationError, source: str) -> str:
    """One line, `<file>: invalid configuration: <key>: <problem>; <key>: <problem>`, so that the
    command-line edge prints `fuseline: ...` and nothing else."""
    problems = []
    for problem in err.errors():
        key = ".".join(str(part) for part in problem["loc"] if part not in ("function-after",))
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            message = "unknown key" + _did_you_mean(problem["loc"])
        nested = re.match(r"([A-Za-z_][\w.]*): (.*)", message, re.DOTALL)
        if problem["type"] == "value_error" and nested:
            # a component's own option (e.g. a head's `hidden`) reports its key in the message
            key, message = f"{key}.{nested.group(1)}" if key else nested.group(1), nested.group(2)
        problem_line = f"{key or '<root>'}: {message}"  # a key or value may hold a line break
        problems.append(problem_line.replace("\r", "\\r").replace("\n", "\\n"))
    return f"{source}: invalid configuration: " + "; ".join(problems)


def _did_you_mean(loc: tuple[int | str, ...]) -> str:
    """`; did you mean 'train.lr'?` for an unknown key (`train.lrr`), from the keys valid where it
    stands; empty when none is close. Every command that loads params says it, not only check."""
    keys = _keys_at(loc[:-1])
    close = difflib.get_close_matches(str(loc[-1]), keys, n=1, cutoff=0.6) if keys else []
    if not close:
        return ""
    return "; did you mean " + repr(".".join([*(str(part) for part in loc[:-1]), close[0]])) + "?"


def _keys_at(path: tuple[int | str, ...]) -> list[str]:
    """The keys the model at `path` in params.yaml declares (a list index stays on its item's model)."""
    model: type[BaseModel] | None = Params
    for part in path:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if model is not None else None
        model = _model_in(field.annotation) if field is not None else None
        if model is None:
            return []
    return list(model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The config model an annotation holds: itself, or inside `X | None` or `list[X]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((m for arg in get_args(annotation) if (m := _model_in(arg)) is not None), None)
