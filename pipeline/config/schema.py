"""The config schema: every key of a competition config and a recipe, validated by pydantic.

A competition config (``configs/<competition>.yaml``) names the data, the task,
the metric, the folds and the training defaults. A model recipe
(``configs/recipes/<name>.yaml``) names an architecture and overrides training
settings that suit it. Command-line overrides (``key=value``) go on top.

Every key is checked before any work starts: an unknown key, a wrong type or a
missing file raises :class:`ConfigError` naming the key, the bad value and the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from pipeline.config.export import ExportConfig
from pipeline.config.tracking import TrackingConfig
from pipeline.task.metrics import METRICS

# How a setting enters a run's hash, kept on the field itself (pipeline.config.hashing reads it): a new
# setting is hashed, in full, unless its field says otherwise.
NOT_HASHED = {"hashed": "never"}        # how fast a run goes or how it is shown, not what it learns
WHEN_SET = {"hashed": "when_set"}       # only away from its default, so runs made before it existed keep their hash
WHEN_GIVEN = {"hashed": "when_given"}   # only when non-empty (competition keys added with the tasks)


def _checks_training(info: ValidationInfo) -> bool:
    return not (info.context or {}).get("skip_training_checks", False)


class StrictModel(BaseModel):
    # strict: YAML carries types ("3" for an int is a mistake); no key means anything at inf or nan (YAML's .inf)
    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True, allow_inf_nan=False)


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
    metric: str | None = None                       # None: the task's usual metric (pipeline.task.tasks)
    solution: str | None = None
    test_csv: str | None = None
    demo: Literal["digits", "digits_binary", "digits_multilabel", "digits_regression", "digits_ordinal"] | None = None
    # task-specific: multilabel targets as 0/1 columns, the binary positive class, a regression target's range
    target_columns: list[str] | None = Field(default=None, json_schema_extra=WHEN_GIVEN)
    positive_class: str | None = Field(default=None, json_schema_extra=WHEN_GIVEN)
    target_range: list[float] | None = Field(default=None, json_schema_extra=WHEN_GIVEN)
    metrics: dict[str, UserMetricConfig] = Field(json_schema_extra=WHEN_GIVEN, default_factory=dict)

    @field_validator("train_images", "test_images")
    @classmethod
    def _has_id_placeholder(cls, value: str) -> str:
        if "{id}" not in value:
            raise ValueError(f"{value!r} must contain '{{id}}', e.g. 'train/{{id}}.png'")
        return value

    @model_validator(mode="after")
    def _task_keys(self) -> "CompetitionConfig":
        from pipeline.task.tasks import get_task

        if self.target_columns is not None and self.task != "multilabel":
            raise ValueError(
                f"target_columns are for task 'multilabel' (one 0/1 column per label); task is {self.task!r}"
            )
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
            raise ValueError(
                f"strategy {self.strategy!r} needs folds.group_column (the column of train.csv that holds the group)"
            )
        return self


class TrainConfig(StrictModel):
    """Training settings; the competition gives defaults, a recipe overrides them."""

    model: str | None = None
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    pretrained: bool | str = False
    image_size: int | None = Field(default=None, ge=8)
    # recipe: a recipe's image_size overrides the competition's; competition: the competition's image_size for every run
    image_size_from: Literal["recipe", "competition"] = Field(default="recipe", json_schema_extra=NOT_HASHED)
    small_input: bool = Field(
        default=False, json_schema_extra=WHEN_SET
    )  # keep more resolution in the stem for small images (models.adapt_small_input)
    mean: list[float] | None = None
    std: list[float] | None = None
    interpolation: Literal["nearest", "bilinear", "bicubic", "area", "lanczos"] | None = None
    epochs: int = Field(default=10, ge=1)
    batch_size: Annotated[int, Field(ge=1)] | Literal["auto"] = 64  # "auto": the largest that fits the GPU
    lr: float = Field(default=1e-3, gt=0)
    optimizer: str = Field(default="adamw", json_schema_extra=WHEN_SET)   # timm.optim.list_optimizers(): sgd, lamb
    weight_decay: float = Field(default=0.05, ge=0)
    warmup_epochs: float = Field(default=1.0, ge=0)
    loss: Literal["auto", "ce", "bce", "mse", "huber"] = Field(
        default="auto", json_schema_extra=WHEN_SET
    )  # auto: the task's usual loss (pipeline.task.tasks)
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    drop_rate: float = Field(default=0.0, ge=0, lt=1)
    grad_clip: float | None = Field(default=None, gt=0)
    patience: int | None = Field(default=None, ge=1)
    seed: int = 42
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True
    amp_dtype: Literal["auto", "bf16", "fp16"] = Field(
        default="auto", json_schema_extra=WHEN_SET
    )  # auto: bf16 where the GPU has it, else fp16
    channels_last: bool = True
    compile: bool | Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = Field(
        default=False, json_schema_extra=NOT_HASHED
    )
    sync_bn: bool = Field(default=False, json_schema_extra=WHEN_SET)  # SyncBatchNorm across GPUs under torchrun
    ddp_backend: Literal["auto", "nccl", "gloo"] = Field(
        default="auto", json_schema_extra=NOT_HASHED
    )  # auto: nccl on GPUs, gloo on CPUs
    # the data path: decoded-image cache and DataLoader settings ("auto": chosen from the machine)
    cache: Literal["auto", "disk", "memory", "off"] = Field(default="auto", json_schema_extra=NOT_HASHED)
    cache_margin: float = Field(json_schema_extra=NOT_HASHED, default=1.0, ge=1.0, le=2.0)
    num_workers: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(default="auto", json_schema_extra=NOT_HASHED)
    pin_memory: bool | Literal["auto"] = Field(default="auto", json_schema_extra=NOT_HASHED)
    persistent_workers: bool | Literal["auto"] = Field(default="auto", json_schema_extra=NOT_HASHED)
    prefetch_factor: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(default="auto", json_schema_extra=NOT_HASHED)
    log_every: int = Field(json_schema_extra=NOT_HASHED, default=20, ge=1)
    # CPU only: freed activations go back to the system at once (lower peak RSS, far slower steps; runtime.py)
    return_freed_memory: bool = Field(default=False, json_schema_extra=NOT_HASHED)
    augment: list[dict[str, dict[str, Any]]] = Field(default_factory=list)  # albumentations, per image on the CPU
    device_augment: list[dict[str, dict[str, Any]]] = Field(
        json_schema_extra=WHEN_SET, default_factory=list
    )  # per batch on the device (transforms.py)
    # a named set of device steps run before device_augment (transforms.AUGMENT_POLICIES): none, flip, light, ...
    augment_policy: str = Field(default="none", json_schema_extra=WHEN_SET)
    tta: list[str] = Field(json_schema_extra=NOT_HASHED, default_factory=lambda: ["identity"])
    # training recipes (README "Training recipes"); each is off by default and hashed only when set
    ema: bool = Field(
        default=False, json_schema_extra=WHEN_SET
    )  # validate, keep and predict with an EMA of the weights
    ema_decay: float = Field(json_schema_extra=WHEN_SET, default=0.999, gt=0, lt=1)
    ema_warmup: bool = Field(
        default=True, json_schema_extra=WHEN_SET
    )  # timm's decay warm-up: 1 - (1 + step)^(-2/3), capped at ema_decay
    mixup_alpha: float = Field(
        json_schema_extra=WHEN_SET, default=0.0, ge=0
    )  # Beta(alpha, alpha) mixing weight; 0: no mixup
    cutmix_alpha: float = Field(
        json_schema_extra=WHEN_SET, default=0.0, ge=0
    )  # Beta(alpha, alpha) box area; 0: no cutmix
    mixup_prob: float = Field(json_schema_extra=WHEN_SET, default=1.0, ge=0, le=1)  # share of batches mixed
    mixup_switch_prob: float = Field(
        json_schema_extra=WHEN_SET, default=0.5, ge=0, le=1
    )  # cutmix instead of mixup when both are on
    mixup_mode: Literal["batch", "pair", "elem"] = Field(
        default="batch", json_schema_extra=WHEN_SET
    )  # one lambda per batch, per pair or per image
    mixup_off_epochs: int = Field(
        json_schema_extra=WHEN_SET, default=0, ge=0
    )  # train the last N epochs on clean images
    grad_accum_steps: int = Field(json_schema_extra=WHEN_SET, default=1, ge=1)  # an optimizer step every N batches
    # fine-tuning pretrained weights (README "Fine-tuning: head first, then layer-wise learning rates")
    freeze_epochs: int = Field(
        json_schema_extra=WHEN_SET, default=0, ge=0
    )  # the first N of `epochs` train the classifier only
    layer_decay: float | None = Field(
        json_schema_extra=WHEN_SET, default=None, gt=0, le=1
    )  # lr x decay^(depth from the head); timm's groups
    # the fold's final model (README "Checkpoint averaging and progressive resizing")
    average_last: int = Field(
        json_schema_extra=WHEN_SET, default=0, ge=0
    )  # average the weights of the last N epochs (SWA-style)
    # [[from_epoch, side], ...]: smaller training images in the first epochs
    progressive_sizes: list[Annotated[list[int], Field(min_length=2, max_length=2)]] | None = Field(
        default=None, json_schema_extra=WHEN_SET
    )
    # a preset over the recipe: <recipes>/presets/<preset>/<family>.yaml (README "Training recipes"; make train PRESET=)
    preset: str | None = Field(default=None, json_schema_extra=WHEN_SET)

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

    # The transform, policy and view names are checked against pipeline.vision (host, device, policies, views), which
    # needs torch and albumentations. Commands that never train (folds, ensemble, import-oof) load the config with
    # training=False and skip these checks; every training path validates its TrainConfig again
    # through resolve_train_config, with them, before any work.
    @field_validator("augment")
    @classmethod
    def _known_transforms(
        cls, steps: list[dict[str, dict[str, Any]]], info: ValidationInfo
    ) -> list[dict[str, dict[str, Any]]]:
        if _checks_training(info):
            from pipeline.vision.host import check_augment_steps

            check_augment_steps(steps)
        return steps

    @field_validator("device_augment")
    @classmethod
    def _known_device_steps(
        cls, steps: list[dict[str, dict[str, Any]]], info: ValidationInfo
    ) -> list[dict[str, dict[str, Any]]]:
        if _checks_training(info):
            from pipeline.vision.device import check_device_augment_steps

            check_device_augment_steps(steps)
        return steps

    @field_validator("augment_policy")
    @classmethod
    def _known_policy(cls, name: str, info: ValidationInfo) -> str:
        if _checks_training(info):
            from pipeline.vision.policies import augment_policy_steps

            augment_policy_steps(name)
        return name

    @field_validator("optimizer")
    @classmethod
    def _known_optimizer(cls, name: str, info: ValidationInfo) -> str:
        if _checks_training(info):
            from pipeline.config.optimizers import check_optimizer  # timm: only when a command trains

            check_optimizer(name)
        return name

    @field_validator("tta")
    @classmethod
    def _known_views(cls, views: list[str], info: ValidationInfo) -> list[str]:
        if _checks_training(info):
            from pipeline.vision.views import parse_view

            for view in views:
                parse_view(view)
        return views

    @model_validator(mode="after")
    def _schedule_keys(self) -> "TrainConfig":
        # each names the key and the fix: these are epochs within `epochs`
        if self.freeze_epochs and self.freeze_epochs >= self.epochs:
            raise ValueError(
                f"freeze_epochs ({self.freeze_epochs}) must be below epochs ({self.epochs}): the head-only "
                "epochs are the first of `epochs`, and at least one epoch trains the whole network"
            )
        if self.average_last > self.epochs:
            raise ValueError(f"average_last ({self.average_last}) must be at most epochs ({self.epochs})")
        if self.progressive_sizes is not None:
            starts = [start for start, _ in self.progressive_sizes]
            if not starts or starts != sorted(set(starts)) or starts[0] != 0 or starts[-1] >= self.epochs:
                raise ValueError(
                    f"progressive_sizes {self.progressive_sizes}: give [from_epoch, side] pairs with distinct "
                    f"from_epochs, ascending, from 0 to below epochs ({self.epochs}), e.g. [[0, 128], [5, 224]]"
                )
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
    # one_se: the simplest candidate within one standard error of the best score; best: the best score. The score:
    # nested CV, or expected: nested CV plus each candidate's estimated gain from averaging k fold models (test set)
    selection: Literal["one_se", "best"] = "one_se"
    selection_score: Literal["nested", "expected"] = "nested"
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
    diverge: float = Field(default=4.0, gt=1)  # stop once the smoothed loss exceeds diverge x its best
    smoothing: float = Field(default=0.98, ge=0, lt=1)  # the loss's exponential moving average (fastai's beta)

    @model_validator(mode="after")
    def _range(self) -> "LrFindConfig":
        if not self.start_lr < self.end_lr:
            raise ValueError(f"start_lr ({self.start_lr}) must be below lr_find.end_lr ({self.end_lr})")
        return self


class PseudoConfig(StrictModel):
    """``make pseudo`` (and ``make distill`` with ``distill.pseudo``): test rows labelled by each fold's teacher
    (:mod:`pipeline.students.teach`)."""

    hard_threshold: float | None = Field(default=None, gt=0, le=1)  # None: soft targets; else one-hot above it
    weight: float = Field(default=1.0, gt=0)  # the loss weight of a pseudo row (a true row weighs 1)
    max_share: float = Field(default=1.0, gt=0)  # pseudo rows at most this share of the fold's training rows


class DistillConfig(StrictModel):
    """``make distill``: (1 - alpha) x the task loss on the true labels + alpha x T^2 x KL to the teacher (Hinton)."""

    alpha: float = Field(default=0.5, ge=0, le=1)
    temperature: float = Field(default=2.0, gt=0, le=100)  # Hinton: 1-20; far above, T^2 overflows to a nan loss
    # fold: fold k's soft targets from the teacher's fold-k models (never saw fold k); oof: its OOF rows (leaky)
    targets: Literal["fold", "oof"] = "fold"
    pseudo: bool = False  # also train on pseudo-labelled test rows (the pseudo: section)


class ExecutorConfig(StrictModel):
    """Where the grid of (run, fold) and zoo jobs runs (:mod:`pipeline.core.executors`); ``EXECUTOR=`` sets ``name``."""

    name: str = "local"
    # Ray: GPUs per job (None: 1 where the cluster has GPUs, else 0), CPUs per job, retries after a worker dies
    gpus_per_job: float | None = Field(default=None, ge=0)
    cpus_per_job: float = Field(default=1.0, gt=0)
    max_retries: int = Field(default=2, ge=0)

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        from pipeline.core.executors import EXECUTORS

        if name not in EXECUTORS:
            raise ValueError(f"unknown executor {name!r}; choose one of {sorted(EXECUTORS)}")
        return name

    def settings(self):
        from pipeline.core.executors import ExecutorSettings

        return ExecutorSettings(
            gpus_per_job=self.gpus_per_job, cpus_per_job=self.cpus_per_job, max_retries=self.max_retries
        )


class Config(StrictModel):
    """One competition: the root of a YAML file."""

    @model_validator(mode="after")
    def _features_need_test_table(self) -> "Config":
        if self.ensemble.stacker_features and not self.competition.test_csv:
            raise ValueError("ensemble.stacker_features need competition.test_csv (the test rows' metadata: id "
                             "plus the same columns)")
        return self

    @model_validator(mode="after")
    def _task_fits(self) -> "Config":
        from pipeline.task.metrics import check_metric_task, load_user_metric
        from pipeline.task.tasks import resolve_loss

        comp = self.competition
        for name, spec in comp.metrics.items():
            load_user_metric(
                name, spec.function, spec.greater_is_better, spec.needs, (comp.task,), base_dir=self.config_dir
            )
        if comp.metric not in METRICS:
            raise ValueError(
                f"unknown metric {comp.metric!r}; choose one of {sorted(METRICS)} "
                "or define it under competition.metrics"
            )
        check_metric_task(comp.metric, comp.task)
        resolve_loss(comp.task, self.train.loss)
        if self.folds.strategy == "multilabel" and comp.task != "multilabel":
            raise ValueError(
                f"folds.strategy 'multilabel' is for task 'multilabel'; task is {comp.task!r} (use 'stratified')"
            )
        if self.folds.strategy == "stratified_group" and comp.task == "multilabel":
            raise ValueError("folds.strategy 'stratified_group' can't stratify label sets, use 'group' or 'multilabel'")
        if self.train.image_size_from == "competition" and self.train.image_size is None:
            raise ValueError(
                "train.image_size_from 'competition' needs train.image_size in the competition config "
                "(e.g. image_size: 32); or set image_size_from: recipe"
            )
        return self

    competition: CompetitionConfig
    folds: FoldsConfig = Field(default_factory=FoldsConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    ensemble: EnsembleConfig = Field(default_factory=EnsembleConfig)
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    lr_find: LrFindConfig = Field(default_factory=LrFindConfig)
    pseudo: PseudoConfig = Field(default_factory=PseudoConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
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
