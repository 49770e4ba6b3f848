"""Competition configs and model recipes: YAML, validated on load.

A competition config (``configs/<competition>.yaml``) names the data, the task,
the metric, the folds and the training defaults. A model recipe
(``configs/recipes/<name>.yaml``) names an architecture and overrides training
settings that suit it. Command-line overrides (``key=value``) go on top.

Every key is checked before any work starts: an unknown key, a wrong type or a
missing file raises :class:`ConfigError` naming the key, the bad value and the fix.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from pipeline.errors import PipelineError
from pipeline.io import file_sha256, safe_name
from pipeline.metrics import METRICS


class _Loader(yaml.SafeLoader):
    """PyYAML follows YAML 1.1, where ``1e-3`` is a string; read it as the float every user means."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def yaml_load(text: str):
    return yaml.load(text, Loader=_Loader)


class ConfigError(PipelineError, ValueError):
    """A config file or override is invalid; the message says which key and how to fix it."""


class StrictModel(BaseModel):
    # strict: YAML already carries types, so "3" for an int is a mistake worth reporting.
    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True)


class UserMetricConfig(StrictModel):
    """A metric of the user's own: ``function`` is ``file.py:name`` (beside the config) or ``package.module:name``."""

    function: str = Field(pattern=r"^[^:]+:[A-Za-z_][A-Za-z0-9_]*$")
    greater_is_better: bool
    needs: Literal["proba", "label", "value"] = "proba"


class CompetitionConfig(StrictModel):
    """Where the data lives and what is predicted."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    data_dir: str
    train_csv: str = "train.csv"
    sample_submission: str = "sample_submission.csv"
    train_images: str = "train/{id}.png"
    test_images: str = "test/{id}.png"
    id_column: str = "id"
    target_column: str = "label"
    task: Literal["multiclass", "binary", "multilabel", "regression", "ordinal"] = "multiclass"
    metric: str | None = None                       # None: the task's usual metric (pipeline.tasks)
    solution: str | None = None
    test_csv: str | None = None
    demo: Literal["digits", "digits_binary", "digits_multilabel", "digits_regression", "digits_ordinal"] | None = None
    # task-specific: multilabel targets as 0/1 columns, the binary positive class, a regression target's range
    target_columns: list[str] | None = None
    positive_class: str | None = None
    target_range: list[float] | None = None
    metrics: dict[str, UserMetricConfig] = Field(default_factory=dict)

    @field_validator("train_images", "test_images")
    @classmethod
    def _has_id_placeholder(cls, value: str) -> str:
        if "{id}" not in value:
            raise ValueError(f"{value!r} must contain '{{id}}', e.g. 'train/{{id}}.png'")
        return value

    @model_validator(mode="after")
    def _task_keys(self) -> "CompetitionConfig":
        from pipeline.tasks import get_task

        if self.target_columns is not None and self.task != "multilabel":
            raise ValueError(f"target_columns are for task 'multilabel' (one 0/1 column per label); task is {self.task!r}")
        if self.target_columns is not None and len(self.target_columns) < 2:
            raise ValueError(f"target_columns needs at least 2 label columns, got {self.target_columns}")
        if self.positive_class is not None and self.task != "binary":
            raise ValueError(f"positive_class is for task 'binary'; task is {self.task!r}")
        if self.target_range is not None:
            if self.task not in ("regression", "ordinal"):
                raise ValueError(f"target_range is for tasks 'regression' and 'ordinal'; task is {self.task!r}")
            if len(self.target_range) != 2 or not self.target_range[0] < self.target_range[1]:
                raise ValueError(f"target_range must be [low, high] with low < high, got {self.target_range}")
        if self.metric is None:
            self.metric = get_task(self.task).default_metric
        return self

    @property
    def target_names(self) -> list[str]:
        """The train.csv columns that hold the targets."""
        return list(self.target_columns) if self.target_columns else [self.target_column]


class FoldsConfig(StrictModel):
    n_splits: int = Field(default=5, ge=2, le=50)
    # stratified: by class, by label sets (multilabel: iterative stratification), or by target bins (regression)
    strategy: Literal["stratified", "kfold", "group", "stratified_group", "multilabel"] = "stratified"
    group_column: str | None = None
    seed: int = 42

    @model_validator(mode="after")
    def _group_needs_column(self) -> "FoldsConfig":
        if self.strategy in ("group", "stratified_group") and not self.group_column:
            raise ValueError(f"strategy {self.strategy!r} needs folds.group_column (the column of train.csv that holds the group)")
        return self


class TrainConfig(StrictModel):
    """Training settings; the competition gives defaults, a recipe overrides them."""

    model: str | None = None
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    pretrained: bool | str = False
    image_size: int | None = Field(default=None, ge=8)
    # recipe: a recipe's image_size overrides the competition's; competition: the competition's image_size for every run
    image_size_from: Literal["recipe", "competition"] = "recipe"
    small_input: bool = False   # keep more resolution in the stem for small images (models.adapt_small_input)
    mean: list[float] | None = None
    std: list[float] | None = None
    interpolation: Literal["nearest", "bilinear", "bicubic", "area", "lanczos"] | None = None
    epochs: int = Field(default=10, ge=1)
    batch_size: Annotated[int, Field(ge=1)] | Literal["auto"] = 64   # "auto": the largest that fits the GPU
    lr: float = Field(default=1e-3, gt=0)
    optimizer: str = "adamw"    # any name in timm's optimizer registry (timm.optim.list_optimizers()): sgd, lamb, ...
    weight_decay: float = Field(default=0.05, ge=0)
    warmup_epochs: float = Field(default=1.0, ge=0)
    loss: Literal["auto", "ce", "bce", "mse", "huber"] = "auto"   # auto: the task's usual loss (pipeline.tasks)
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    drop_rate: float = Field(default=0.0, ge=0, lt=1)
    grad_clip: float | None = Field(default=None, gt=0)
    patience: int | None = Field(default=None, ge=1)
    seed: int = 42
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True
    amp_dtype: Literal["auto", "bf16", "fp16"] = "auto"          # auto: bf16 where the GPU has it, else fp16
    channels_last: bool = True
    compile: bool | Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = False
    sync_bn: bool = False                                        # SyncBatchNorm across GPUs under torchrun
    ddp_backend: Literal["auto", "nccl", "gloo"] = "auto"        # auto: nccl on GPUs, gloo on CPUs
    # the data path: decoded-image cache and DataLoader settings ("auto": chosen from the machine)
    cache: Literal["auto", "disk", "memory", "off"] = "auto"
    cache_margin: float = Field(default=1.0, ge=1.0, le=2.0)
    num_workers: Annotated[int, Field(ge=0)] | Literal["auto"] = "auto"
    pin_memory: bool | Literal["auto"] = "auto"
    persistent_workers: bool | Literal["auto"] = "auto"
    prefetch_factor: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    log_every: int = Field(default=20, ge=1)
    # CPU only: freed activations go back to the system at once (lower peak RSS, slower steps; runtime.py)
    return_freed_memory: bool = True
    augment: list[dict[str, dict[str, Any]]] = Field(default_factory=list)          # albumentations, per image on the CPU
    device_augment: list[dict[str, dict[str, Any]]] = Field(default_factory=list)   # per batch on the device (transforms.py)
    # a named set of device steps run before device_augment (transforms.AUGMENT_POLICIES): none, flip, light, trivial, ...
    augment_policy: str = "none"
    tta: list[str] = Field(default_factory=lambda: ["identity"])
    # training recipes (README "Training recipes"); each is off by default and hashed only when set
    ema: bool = False                                   # validate, keep and predict with an EMA of the weights
    ema_decay: float = Field(default=0.999, gt=0, lt=1)
    ema_warmup: bool = True                             # timm's decay warm-up: 1 - (1 + step)^(-2/3), capped at ema_decay
    mixup_alpha: float = Field(default=0.0, ge=0)       # Beta(alpha, alpha) mixing weight; 0: no mixup
    cutmix_alpha: float = Field(default=0.0, ge=0)      # Beta(alpha, alpha) box area; 0: no cutmix
    mixup_prob: float = Field(default=1.0, ge=0, le=1)  # share of batches mixed
    mixup_switch_prob: float = Field(default=0.5, ge=0, le=1)   # cutmix instead of mixup when both are on
    mixup_mode: Literal["batch", "pair", "elem"] = "batch"      # one lambda per batch, per pair or per image
    mixup_off_epochs: int = Field(default=0, ge=0)      # train the last N epochs on clean images
    grad_accum_steps: int = Field(default=1, ge=1)      # an optimizer step every N batches
    # fine-tuning pretrained weights (README "Fine-tuning: head first, then layer-wise learning rates")
    freeze_epochs: int = Field(default=0, ge=0)         # the first N of `epochs` train the classifier only
    layer_decay: float | None = Field(default=None, gt=0, le=1)   # lr x decay^(depth from the head); timm's groups
    # the fold's final model (README "Checkpoint averaging and progressive resizing")
    average_last: int = Field(default=0, ge=0)          # average the weights of the last N epochs (SWA-style)
    # [[from_epoch, side], ...]: smaller training images in the first epochs
    progressive_sizes: list[Annotated[list[int], Field(min_length=2, max_length=2)]] | None = None
    # a preset over the recipe: <recipes>/presets/<preset>/<family>.yaml (README "Training recipes"; make train PRESET=)
    preset: str | None = None

    @property
    def mixes(self) -> bool:
        """Whether mixup or cutmix is on."""
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    @field_validator("cache", mode="before")
    @classmethod
    def _cache_yaml_bool(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare `off` (or `no`) as false and `on` as true: they mean "off" and "disk" here
        if isinstance(value, bool):
            return "disk" if value else "off"
        return value

    # The transform, policy and view names are checked against pipeline.transforms, which needs torch and
    # albumentations. Commands that never train (folds, ensemble, import-oof) load the config with
    # training=False and skip these checks; every training path validates its TrainConfig again
    # through resolve_train_config, with them, before any work.
    @field_validator("augment")
    @classmethod
    def _known_transforms(cls, steps: list[dict[str, dict[str, Any]]], info: ValidationInfo) -> list[dict[str, dict[str, Any]]]:
        if _checks_training(info):
            from pipeline.transforms import check_augment_steps

            check_augment_steps(steps)
        return steps

    @field_validator("device_augment")
    @classmethod
    def _known_device_steps(cls, steps: list[dict[str, dict[str, Any]]], info: ValidationInfo) -> list[dict[str, dict[str, Any]]]:
        if _checks_training(info):
            from pipeline.transforms import check_device_augment_steps

            check_device_augment_steps(steps)
        return steps

    @field_validator("augment_policy")
    @classmethod
    def _known_policy(cls, name: str, info: ValidationInfo) -> str:
        if _checks_training(info):
            from pipeline.transforms import augment_policy_steps

            augment_policy_steps(name)
        return name

    @field_validator("optimizer")
    @classmethod
    def _known_optimizer(cls, name: str, info: ValidationInfo) -> str:
        if _checks_training(info):
            import difflib

            from timm.optim import get_optimizer_info, list_optimizers

            # timm's factory reads "lookahead_<name>" as <name> wrapped in Lookahead
            prefix, _, base = name.lower().rpartition("_")
            try:
                if prefix not in ("", "lookahead"):
                    raise ValueError(name)
                get_optimizer_info(base)
            except ValueError:
                close = difflib.get_close_matches(name.lower(), list_optimizers(), n=4, cutoff=0.6)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise ValueError(f"unknown optimizer {name!r}{hint} (timm.optim.list_optimizers() lists the "
                                 "names; lookahead_<name> wraps one in Lookahead)") from None
        return name

    @field_validator("tta")
    @classmethod
    def _known_views(cls, views: list[str], info: ValidationInfo) -> list[str]:
        if _checks_training(info):
            from pipeline.transforms import parse_view

            for view in views:
                parse_view(view)
        return views

    @model_validator(mode="after")
    def _schedule_keys(self) -> "TrainConfig":
        # each names the key and the fix: these are epochs within `epochs`
        if self.freeze_epochs and self.freeze_epochs >= self.epochs:
            raise ValueError(f"freeze_epochs ({self.freeze_epochs}) must be below epochs ({self.epochs}): the head-only "
                             "epochs are the first of `epochs`, and at least one epoch trains the whole network")
        if self.average_last > self.epochs:
            raise ValueError(f"average_last ({self.average_last}) must be at most epochs ({self.epochs})")
        if self.progressive_sizes is not None:
            starts = [start for start, _ in self.progressive_sizes]
            if not starts or starts != sorted(set(starts)) or starts[0] != 0 or starts[-1] >= self.epochs:
                raise ValueError(f"progressive_sizes {self.progressive_sizes}: give [from_epoch, side] pairs with distinct "
                                 f"from_epochs, ascending, from 0 to below epochs ({self.epochs}), e.g. [[0, 128], [5, 224]]")
            if any(side < 8 for _, side in self.progressive_sizes):
                raise ValueError(f"progressive_sizes {self.progressive_sizes}: every side must be at least 8 pixels")
        return self

    @model_validator(mode="after")
    def _mean_std_pairs(self) -> "TrainConfig":
        for key in ("mean", "std"):
            value = getattr(self, key)
            if value is not None and len(value) != 3:
                raise ValueError(f"{key} needs 3 values (one per RGB channel), got {value}")
        return self


class EnsembleConfig(StrictModel):
    # 100 trials: about 5 s for the nested fits of 18 models x 1,347 rows on 2 cores (docs/benchmarks.md)
    optuna_trials: int = Field(default=100, ge=1)
    optuna_timeout: float | None = Field(default=None, gt=0)
    seed: int = 42
    methods: list[str] | None = None
    prune_correlation: float = Field(default=0.999, gt=0, le=1)
    stacker_features: list[str] = Field(default_factory=list)
    method_params: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # per_fold: each blend applied to every fold's models, then averaged; fold_mean: to the fold means (former way)
    apply: Literal["per_fold", "fold_mean"] = "per_fold"
    # one_se: the simplest candidate within one standard error of the best nested score; best: the best score
    selection: Literal["one_se", "best"] = "one_se"
    # blend only these runs (e.g. one round of the student-teacher loop against another); null: every finished run
    runs: list[str] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _known_methods(self) -> "EnsembleConfig":
        from pipeline.blend import make_blend

        for name in list(self.methods or []) + list(self.method_params):
            try:
                make_blend(name, **self.method_params.get(name, {}))
            except KeyError as exc:  # an unknown method; pydantic reports ValueErrors only
                raise ValueError(exc.args[0]) from None
        return self


class LrFindConfig(StrictModel):
    """``make lr-find``: an exponential learning-rate sweep (:mod:`pipeline.train.lr_find`); no run is written."""

    start_lr: float = Field(default=1e-7, gt=0)
    end_lr: float = Field(default=10.0, gt=0)
    num_steps: int = Field(default=100, ge=5)
    diverge: float = Field(default=4.0, gt=1)       # stop once the smoothed loss exceeds diverge x its best
    smoothing: float = Field(default=0.98, ge=0, lt=1)   # the loss's exponential moving average (fastai's beta)

    @model_validator(mode="after")
    def _range(self) -> "LrFindConfig":
        if not self.start_lr < self.end_lr:
            raise ValueError(f"lr_find.start_lr ({self.start_lr}) must be below lr_find.end_lr ({self.end_lr})")
        return self


class PseudoConfig(StrictModel):
    """``make pseudo`` (and ``make distill`` with ``distill.pseudo``): test rows labelled by each fold's teacher
    (:mod:`pipeline.teach`)."""

    hard_threshold: float | None = Field(default=None, gt=0, le=1)   # None: soft targets; else one-hot above it
    weight: float = Field(default=1.0, gt=0)         # the loss weight of a pseudo row (a true row weighs 1)
    max_share: float = Field(default=1.0, gt=0)      # pseudo rows at most this share of the fold's training rows


class DistillConfig(StrictModel):
    """``make distill``: (1 - alpha) x the task loss on the true labels + alpha x T^2 x KL to the teacher (Hinton)."""

    alpha: float = Field(default=0.5, ge=0, le=1)
    temperature: float = Field(default=2.0, gt=0)
    # fold: fold k's soft targets from the teacher's fold-k models (never saw fold k); oof: its OOF rows (leaky)
    targets: Literal["fold", "oof"] = "fold"
    pseudo: bool = False                             # also train on pseudo-labelled test rows (the pseudo: section)


class ExecutorConfig(StrictModel):
    """Where the grid of (run, fold) and zoo jobs runs (:mod:`pipeline.executors`); ``EXECUTOR=`` sets ``name``."""

    name: str = "local"
    # Ray: GPUs per job (None: 1 where the cluster has GPUs, else 0), CPUs per job, retries after a worker dies
    gpus_per_job: float | None = Field(default=None, ge=0)
    cpus_per_job: float = Field(default=1.0, gt=0)
    max_retries: int = Field(default=2, ge=0)

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        from pipeline.executors import EXECUTORS

        if name not in EXECUTORS:
            raise ValueError(f"unknown executor {name!r}; choose one of {sorted(EXECUTORS)}")
        return name

    def settings(self):
        from pipeline.executors import ExecutorSettings

        return ExecutorSettings(gpus_per_job=self.gpus_per_job, cpus_per_job=self.cpus_per_job,
                                max_retries=self.max_retries)


class Config(StrictModel):
    """One competition: the root of a YAML file."""

    @model_validator(mode="after")
    def _features_need_test_table(self) -> "Config":
        if self.ensemble.stacker_features and not self.competition.test_csv:
            raise ValueError("ensemble.stacker_features need competition.test_csv (the test rows' metadata: id plus the same columns)")
        return self

    @model_validator(mode="after")
    def _task_fits(self) -> "Config":
        from pipeline.metrics import check_metric_task, load_user_metric
        from pipeline.tasks import resolve_loss

        comp = self.competition
        for name, spec in comp.metrics.items():
            load_user_metric(name, spec.function, spec.greater_is_better, spec.needs, (comp.task,),
                             base_dir=self.config_dir)
        if comp.metric not in METRICS:
            raise ValueError(f"unknown metric {comp.metric!r}; choose one of {sorted(METRICS)} "
                             "or define it under competition.metrics")
        check_metric_task(comp.metric, comp.task)
        resolve_loss(comp.task, self.train.loss)
        if self.folds.strategy == "multilabel" and comp.task != "multilabel":
            raise ValueError(f"folds.strategy 'multilabel' is for task 'multilabel'; task is {comp.task!r} (use 'stratified')")
        if self.folds.strategy == "stratified_group" and comp.task == "multilabel":
            raise ValueError("folds.strategy 'stratified_group' cannot stratify label sets; use 'group' or 'multilabel'")
        if self.train.image_size_from == "competition" and self.train.image_size is None:
            raise ValueError("train.image_size_from 'competition' needs train.image_size in the competition config "
                             "(e.g. image_size: 32); or set image_size_from: recipe")
        return self

    competition: CompetitionConfig
    folds: FoldsConfig = Field(default_factory=FoldsConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    ensemble: EnsembleConfig = Field(default_factory=EnsembleConfig)
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    lr_find: LrFindConfig = Field(default_factory=LrFindConfig)
    pseudo: PseudoConfig = Field(default_factory=PseudoConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    models: list[str] = Field(default_factory=list)
    recipes_dir: str = "recipes"
    output_dir: str = "."

    # set by load_config, not by the YAML file
    source: str | None = None

    # -- paths -----------------------------------------------------------------
    @property
    def config_dir(self) -> Path:
        return Path(self.source).parent if self.source else Path(".")

    @property
    def data_dir(self) -> Path:
        return (self.config_dir / self.competition.data_dir).resolve()

    def data_path(self, relative: str) -> Path:
        return self.data_dir / relative

    @property
    def out(self) -> Path:
        return Path(self.output_dir)

    @property
    def folds_csv(self) -> Path:
        return self.out / "folds" / f"{self.competition.name}.csv"

    @property
    def runs_dir(self) -> Path:
        return self.out / "runs" / self.competition.name

    @property
    def cache_dir(self) -> Path:
        return self.out / "cache" / self.competition.name

    @property
    def submissions_dir(self) -> Path:
        return self.out / "submissions" / self.competition.name

    @property
    def recipes_path(self) -> Path:
        return self.config_dir / self.recipes_dir


def format_validation_error(error: ValidationError, where: str, root: type[BaseModel] | None = None) -> str:
    """One line per invalid key; an unknown key gets the closest known keys of ``root`` (default: :class:`Config`)."""
    lines = [f"invalid config {where}:"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"])
        if item["type"] == "extra_forbidden":
            lines.append(f"  - unknown key {key!r}{_suggest_key(item, root or Config)}")
        elif item["type"] == "value_error" and isinstance(item.get("input"), dict):
            # a check across keys: the message names them; the whole section as input would only hide it
            message = item["msg"].removeprefix("Value error, ")
            lines.append(f"  - {key}: {message}" if key else f"  - {message}")
        else:
            lines.append(f"  - {key}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


def _suggest_key(item: dict, root: type[BaseModel]) -> str:
    model = _model_at(root, item["loc"][:-1])
    if model is None:
        return ""
    close = difflib.get_close_matches(str(item["loc"][-1]), list(model.model_fields), n=3)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else f"; known keys: {', '.join(model.model_fields)}"


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        model = field.annotation
    return model


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """Parse ``key=value`` strings into a nested dict; values are read as YAML.

    A bare key that names a training setting (``lr=1e-3``) means ``train.<key>``.

    Raises
    ------
    ConfigError
        For an item without ``=``, a value that is not plain YAML (a tag such as
        ``!!python/...`` is refused), or a key that clashes with another.
    """
    nested: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (e.g. train.lr=1e-3)")
        key, raw = item.split("=", 1)
        try:
            value = yaml_load(raw) if raw != "" else None
        except yaml.constructor.ConstructorError as exc:
            raise ConfigError(f"override {item!r}: the value has a YAML tag ({exc.problem}); "
                              "write plain values (numbers, strings, [lists], {mappings})") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({exc}); quote it or fix it") from None
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r}: the key {key!r} has an empty part; write section.key=value, e.g. train.lr=1e-3")
        if len(parts) == 1 and parts[0] in TrainConfig.model_fields:
            parts = ["train", parts[0]]
        node = nested
        for depth, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[:depth + 1])} was already set to a value, "
                                  "not a section")
        node[parts[-1]] = value
    return nested


def _checked_overrides(overrides: Any) -> dict[str, Any]:
    # a list of strings here is a caller that skipped the command line's parsing: say so, do not guess
    if overrides is None:
        return {}
    if not isinstance(overrides, dict):
        raise TypeError(f"overrides must be a dict of settings (parse key=value strings once with parse_overrides); "
                        f"got {type(overrides).__name__}")
    return overrides


def deep_merge(base: dict, update: dict) -> dict:
    """Merge ``update`` into a copy of ``base``; nested dicts merge, other values replace."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key != "model_kwargs":
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, got {type(data).__name__}")
    return data


def _checks_training(info: ValidationInfo) -> bool:
    return not (info.context or {}).get("skip_training_checks", False)


def load_config(path: str | Path, overrides: dict[str, Any] | None = None, check_files: bool = True,
                training: bool = True) -> Config:
    """Read, merge and validate a competition config.

    Parameters
    ----------
    path : str or Path
        The competition YAML file.
    overrides : dict, optional
        Nested settings applied on top: ``ARGS=`` parsed once by the command line
        (:func:`parse_overrides`), or built by a caller such as the zoo.
    check_files : bool
        Also check that the data files exist (skipped for a demo competition
        whose data is built on first use).
    training : bool
        Also check ``train``'s augmentation steps and TTA views against
        :mod:`pipeline.transforms` (torch, albumentations). False for commands that
        never train, so they start without torch; training re-checks them in
        :func:`resolve_train_config`.

    Returns
    -------
    Config
    """
    path = Path(path)
    raw = deep_merge(read_yaml(path), _checked_overrides(overrides))
    raw["source"] = str(path)
    try:
        config = Config.model_validate(raw, context={"skip_training_checks": not training})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path))) from None
    if check_files and config.competition.demo is None:
        check_data_files(config)
    return config


def check_data_files(config: Config) -> None:
    """Raise :class:`ConfigError` if a file the config names is missing."""
    comp = config.competition
    optional = tuple(key for key in ("solution", "test_csv") if getattr(comp, key))
    for key in ("train_csv", "sample_submission") + optional:
        file = config.data_path(getattr(comp, key))
        if not file.is_file():
            raise ConfigError(f"competition.{key}: file {file} does not exist; fix the path in {config.source}")


#: presets live beside the recipes: <recipes>/presets/<preset>/<family>.yaml
PRESETS_DIR = "presets"
# a preset holds training settings for every architecture of a family: which architecture stays the recipe's choice
_NOT_IN_PRESETS = ("model", "model_kwargs", "preset")


def preset_names(config: Config) -> list[str]:
    """The presets available beside the config's recipes (folders of ``<recipes>/presets``), by name."""
    folder = config.recipes_path / PRESETS_DIR
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def preset_file(config: Config, preset: str, model: str) -> Path:
    """The file of ``preset`` for ``model``'s family (:func:`pipeline.models.preset_family`).

    Raises
    ------
    ConfigError
        For an unknown preset (listing the available ones) or a family the preset has no file for.
    """
    from pipeline.models import preset_family  # timm: only when a preset is asked for

    safe_name(preset, "PRESET", f"a preset is a folder of {config.recipes_path / PRESETS_DIR}")
    available = preset_names(config)
    if preset not in available:
        raise ConfigError(f"unknown preset {preset!r}; available presets: {', '.join(available) or 'none'} "
                          f"(folders of {config.recipes_path / PRESETS_DIR}); or train without PRESET=")
    family = preset_family(model)
    file = config.recipes_path / PRESETS_DIR / preset / f"{family}.yaml"
    if not file.is_file():
        covered = sorted(p.stem for p in file.parent.glob("*.yaml"))
        raise ConfigError(f"preset {preset!r} has no file for {model}'s family {family!r}: it covers {', '.join(covered)}; "
                          f"write {file} or train {model} without PRESET=")
    return file


def _preset(config: Config, preset: str, model: str) -> tuple[dict, Path]:
    """A preset's training settings for ``model`` (and its file)."""
    file = preset_file(config, preset, model)
    values = read_yaml(file)
    refused = [key for key in _NOT_IN_PRESETS if key in values]
    if refused:
        raise ConfigError(f"preset {file} sets {', '.join(refused)}: a preset holds training settings for a whole family; "
                          "the architecture and its keyword arguments belong to the recipe")
    return values, file


def recipe_names(config: Config) -> list[str]:
    """The recipes available beside the config, by name."""
    folder = config.recipes_path
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


@dataclass(frozen=True)
class ImageSizeChoice:
    """The input size a run uses and where it came from.

    ``size`` is None when no config sets one (the model's default input size then applies);
    ``source`` says which file or setting decided; ``competition_size`` is the competition
    config's ``train.image_size`` (what the user set for the data), shown when a recipe overrides it.
    """

    size: int | None
    source: str
    competition_size: int | None = None

    @property
    def overrides_competition(self) -> bool:
        """Whether a recipe replaced the competition's own ``image_size`` with another."""
        return self.source.startswith("recipe") and self.competition_size not in (None, self.size)


def _recipe(config: Config, model: str) -> tuple[dict, Path | None]:
    """The recipe named ``model`` (and its file), or ``{"model": model}`` for an alias or timm name."""
    recipe_file = config.recipes_path / f"{model}.yaml"
    if not recipe_file.is_file():
        return {"model": model}, None
    recipe = read_yaml(recipe_file)
    if "model" not in recipe:
        raise ConfigError(f"recipe {recipe_file} must name its architecture with 'model: <name>'")
    return recipe, recipe_file


def resolve_train_config(config: Config, model: str, overrides: dict[str, Any] | None = None) -> tuple[str, TrainConfig]:
    """The training settings for one run: competition defaults < recipe < preset < overrides.

    ``train.preset`` (``make train PRESET=``, or set in the competition config) adds the
    preset's file for the model's family (:func:`preset_file`) over the recipe; the run's
    default name is then ``<model>-<preset>``.

    ``image_size`` follows ``train.image_size_from``: with ``recipe`` (the default) a recipe's
    size replaces the competition's; with ``competition`` the competition's size (or ``ARGS``')
    applies to every recipe. :func:`image_size_choice` says which one a run got, and why.

    Parameters
    ----------
    config : Config
    model : str
        A recipe name (``configs/recipes/<model>.yaml``), a model alias or a timm name.
    overrides : dict, optional
        Nested settings (:func:`parse_overrides`); those under ``train`` apply here.

    Returns
    -------
    (run_name, TrainConfig)
        ``run_name`` is the run's default name: the recipe's, with ``-<preset>`` under a preset.
    """
    safe_name(model, "MODEL", f"a recipe is named by its file in {config.recipes_path} without '.yaml'")
    base = config.train.model_dump(exclude_unset=False)
    recipe, recipe_file = _recipe(config, model)
    where = str(recipe_file) if recipe_file else f"model {model!r}"
    from_args = _checked_overrides(overrides).get("train") or {}
    merged = deep_merge(deep_merge(base, recipe), from_args)
    run_name = model
    if merged.get("preset") is not None:
        preset = merged["preset"]
        values, file = _preset(config, str(preset), str(merged.get("model") or model))
        merged = deep_merge(deep_merge(deep_merge(base, recipe), values), from_args)
        where, run_name = f"{where} with preset {file}", f"{model}-{preset}"
    if merged.get("image_size_from") == "competition":
        merged["image_size"] = base["image_size"]   # the competition's, with ARGS already merged into it
    try:
        train = TrainConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, where, TrainConfig).replace("  - ", "  - train.")) from None
    check_recipe_fits_task(train, config.competition.task, where)
    return run_name, train


def check_recipe_fits_task(train: TrainConfig, task: str, where: str = "train") -> None:
    """Raise :class:`ConfigError` when a training recipe cannot apply to the competition's task.

    Mixup and cutmix mix two images' targets into soft labels: class probabilities
    (multiclass, binary) or per-label probabilities (multilabel). A regression or ordinal
    target is a value on a scale, trained with MSE/Huber or cut points, not a label
    distribution: a blend of two values is a value neither image has, so the pair is refused.
    """
    if train.mixes and task in ("regression", "ordinal"):
        raise ConfigError(
            f"{where}: train.mixup_alpha/cutmix_alpha are for label tasks (multiclass, binary, multilabel), "
            f"not task {task!r}: mixup mixes targets as class probabilities, and a {task} target is a value on a "
            "scale whose loss (MSE/Huber, or ordinal cut points) does not read a mix of two values as a soft label; "
            "set mixup_alpha: 0 and cutmix_alpha: 0 (ARGS=\"train.mixup_alpha=0 train.cutmix_alpha=0\" overrides "
            "a recipe or preset)")


def image_size_choice(config: Config, model: str, overrides: dict[str, Any] | None = None) -> ImageSizeChoice:
    """Which input size a run of ``model`` uses and which setting decided it.

    Parameters
    ----------
    config : Config
    model : str
        A recipe name, a model alias or a timm name.
    overrides : dict, optional
        The command line's settings (``ARGS``).

    Returns
    -------
    ImageSizeChoice
        ``source`` is one of: ``ARGS``, ``competition config (image_size_from: competition)``,
        ``recipe <file>``, ``competition config``, ``model default``.
    """
    _, cfg = resolve_train_config(config, model, overrides)
    recipe, recipe_file = _recipe(config, model)
    from_args = "image_size" in (_checked_overrides(overrides).get("train") or {})
    if from_args:
        source = "ARGS"
    elif cfg.image_size_from == "competition":
        source = "competition config (image_size_from: competition)"
    elif "image_size" in recipe and recipe_file is not None:
        source = f"recipe {recipe_file.name}"
    elif cfg.image_size is not None:
        source = "competition config"
    else:
        source = "model default"
    return ImageSizeChoice(cfg.image_size, source, config.train.image_size)


def config_file_hashes(config: Config, model: str | None = None, cfg: TrainConfig | None = None) -> dict[str, str]:
    """SHA-256 of every config file a run reads: the competition config, the recipe, the preset, user metric modules.

    Recorded in the run's ``meta.json``, so what a run was made with is known even when
    those files are not tracked by git.

    Parameters
    ----------
    config : Config
    model : str, optional
        The recipe name (no recipe file: an alias or a timm name, nothing to add).
    cfg : TrainConfig, optional
        The run's resolved settings: with ``preset`` set, the preset's file is added.

    Returns
    -------
    dict
        Resolved path -> hex digest, sorted by path.
    """
    files = [Path(config.source)] if config.source else []
    if model is not None:
        files.append(config.recipes_path / f"{model}.yaml")
    if cfg is not None and cfg.preset is not None and cfg.model:
        files.append(preset_file(config, cfg.preset, cfg.model))
    for spec in config.competition.metrics.values():
        module = spec.function.split(":", 1)[0]
        if module.endswith(".py"):
            files.append(config.config_dir / module)
    hashes = {}
    for file in files:
        if file.is_file():
            hashes[str(file.resolve())] = file_sha256(file)
    return dict(sorted(hashes.items()))


def config_hash(data: Any) -> str:
    """A short stable hash of JSON-able data (configs, fold assignments)."""
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
