"""Stage 2: fine-tune one architecture on every fold, predict its validation fold and the test set.

Per fold: albumentations augmentation at the model's own input size and
normalisation, AdamW with linear warm-up then cosine decay, AMP (bf16, or fp16 with
a grad scaler) and channels_last on a GPU, the best checkpoint by the validation
metric, early stopping, and a progress bar. The training state is saved after every
epoch, so a rerun after a crash continues the unfinished fold and skips finished ones.

The hot loop never waits on the GPU: losses are summed on the device and read back
every ``log_every`` steps only.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import load_file as load_safetensors
from safetensors.torch import save_file as save_safetensors
from tqdm.auto import tqdm

from pipeline import io
from pipeline.config import Config, ConfigError, TrainConfig, config_hash, resolve_train_config
from pipeline.data import Competition, ImageDataset, ImageStore, load_competition
from pipeline.folds import FoldsError, read_folds, run_folds
from pipeline.metrics import Metric, get_metric
from pipeline.models import count_parameters, create_model, data_config, model_family, resolve_model_name
from pipeline.report import format_seconds, format_table
from pipeline.store import RunLock, StoreError, code_version, library_versions, prediction_frame, read_meta
from pipeline.transforms import apply_views, build_transform, parse_view

# settings that change how fast a run goes or how it is shown, not what it learns
_NOT_HASHED = ("log_every", "num_workers", "tta")


# -- device and loader ------------------------------------------------------------------

@dataclass(frozen=True)
class Runtime:
    """How the hardware is used: chosen once per run from the device present."""

    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    num_workers: int
    pin_memory: bool

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"


def select_runtime(cfg: TrainConfig, images_in_memory: bool) -> Runtime:
    """Pick the device, AMP dtype, memory format and loader settings for this machine."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is visible; use device=auto or cpu")
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    amp_dtype = None
    if use_cuda and cfg.amp:
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    cpus = os.cpu_count() or 1
    if cfg.num_workers == "auto":
        # on the CPU the model and the loader share the same cores: in-memory images need no workers
        workers = min(8, max(cpus - 1, 0)) if use_cuda else (0 if images_in_memory else min(2, cpus))
    else:
        workers = int(cfg.num_workers)
    if use_cuda:
        torch.backends.cudnn.benchmark = True
    return Runtime(device, amp_dtype, bool(use_cuda and cfg.channels_last), workers, use_cuda)


def make_loader(dataset, batch_size: int, runtime: Runtime, shuffle: bool = False, generator: torch.Generator | None = None, drop_last: bool = False):
    kwargs = dict(batch_size=batch_size, num_workers=runtime.num_workers, pin_memory=runtime.pin_memory, drop_last=drop_last)
    if runtime.num_workers > 0:
        kwargs.update(persistent_workers=True, prefetch_factor=4)
    if shuffle:
        kwargs["sampler"] = torch.utils.data.RandomSampler(dataset, generator=generator)
    return torch.utils.data.DataLoader(dataset, **kwargs)


def _to_device(x: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    x = x.to(runtime.device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if runtime.channels_last else x


def _autocast(runtime: Runtime):
    if runtime.amp_dtype is None:
        return torch.autocast(device_type=runtime.device.type, enabled=False)
    return torch.autocast(device_type="cuda", dtype=runtime.amp_dtype)


# -- optimisation ------------------------------------------------------------------------

def warmup_cosine(total_steps: int, warmup_steps: int, floor: float = 0.01) -> Callable[[int], float]:
    """Learning-rate factor: linear warm-up to 1, then cosine decay to ``floor``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, runtime: Runtime) -> torch.optim.Optimizer:
    # no weight decay on biases and normalisation weights (1-d tensors), as timm does
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=runtime.is_cuda or None)


# -- prediction --------------------------------------------------------------------------

@torch.inference_mode()
def predict_views(model: torch.nn.Module, loader, views: list[Callable], runtime: Runtime) -> np.ndarray:
    """Class probabilities for every view: ``(n_views, n_rows, n_classes)``.

    All views of a batch go through the model in one forward pass; results stay on
    the device until the end, so the loop never waits for a copy to the host.
    """
    model.eval()
    outputs = []
    for x, _ in loader:
        x = _to_device(x, runtime)
        n = x.shape[0]
        with _autocast(runtime):
            logits = model(apply_views(x, views))
        outputs.append(logits.float().softmax(dim=1).view(len(views), n, -1))
    return torch.cat(outputs, dim=1).cpu().numpy()


# -- one fold ------------------------------------------------------------------------------

@dataclass
class FoldData:
    store: ImageStore
    test_store: ImageStore
    y: np.ndarray
    folds: np.ndarray


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


class TrainingError(RuntimeError):
    """Training cannot go on (for example the loss became NaN); the message says what to change."""


def _previous(path: Path) -> Path:
    return path.with_name(path.stem + ".prev" + path.suffix)


def _save_state(path: Path, state: dict) -> None:
    """Save the training state, keeping the one before it as a fallback.

    The older file is renamed aside before the new one is written (itself atomically),
    so at any moment of a crash at least one complete state is on disk.
    """
    if path.is_file():
        os.replace(path, _previous(path))
    io.write_with(path, lambda tmp: torch.save(state, tmp))


def _load_state(path: Path) -> dict | None:
    """The last complete training state: ``last.pt``, else the one before it, else None."""
    for candidate in (path, _previous(path)):
        if not candidate.is_file():
            continue
        try:
            state = torch.load(candidate, map_location="cpu", weights_only=True)
        except Exception as exc:  # a damaged file raises one of several torch/pickle errors
            print(f"  warning: {candidate.name} is damaged ({type(exc).__name__}); trying the state before it")
            continue
        if candidate != path:
            print(f"  using the previous training state {candidate.name} (epoch {state['epoch'] + 1})")
        return state
    return None


def _save_best(path: Path, model: torch.nn.Module, epoch: int, score: float) -> None:
    # the checkpoint carries its own epoch and score, so a resume never trusts a stale figure
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"epoch": str(epoch), "score": repr(float(score))}
    io.write_with(path, lambda tmp: save_safetensors(tensors, str(tmp), metadata=metadata))


def _best_checkpoint_info(path: Path) -> tuple[int, float] | None:
    """(epoch, score) recorded in a best checkpoint, or None if it is missing or damaged."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        return int(metadata["epoch"]), float(metadata["score"])
    except Exception:  # noqa: BLE001 - any unreadable checkpoint is treated as absent
        return None


def _check_loss(mean_loss: float, epoch: int, step: int, cfg: TrainConfig) -> None:
    if not math.isfinite(mean_loss):
        raise TrainingError(
            f"the training loss is {mean_loss} at epoch {epoch + 1}, step {step + 1} (lr {cfg.lr}); "
            "lower train.lr, set train.grad_clip, or set train.amp=false"
        )


def train_fold(run_name: str, cfg: TrainConfig, fold: int, data: FoldData, classes: list[str], metric: Metric, runtime: Runtime, fold_dir: Path, views: list[Callable], view_names: list[str]) -> dict:
    """Train one fold, keep its best checkpoint, predict its validation rows and the test set.

    Returns
    -------
    dict with the fold's scores, best epoch, timings and history (also written to ``fold.json``).
    """
    fold_dir.mkdir(parents=True, exist_ok=True)
    seed = cfg.seed + 1000 * fold
    _seed_everything(seed)
    model = create_model(cfg.model, len(classes), cfg.pretrained, cfg.drop_rate, **cfg.model_kwargs)
    dcfg = data_config(model, cfg.image_size, cfg.mean, cfg.std, cfg.interpolation)
    model.to(runtime.device)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)

    train_idx = np.flatnonzero(data.folds != fold)
    valid_idx = np.flatnonzero(data.folds == fold)
    train_tf = build_transform(dcfg.image_size, dcfg.mean, dcfg.std, dcfg.interpolation, cfg.augment)
    eval_tf = build_transform(dcfg.image_size, dcfg.mean, dcfg.std, dcfg.interpolation)
    train_ds = ImageDataset(data.store, train_idx, train_tf, data.y)
    valid_ds = ImageDataset(data.store, valid_idx, eval_tf, data.y)
    generator = torch.Generator()
    train_loader = make_loader(train_ds, cfg.batch_size, runtime, shuffle=True, generator=generator,
                               drop_last=len(train_ds) > cfg.batch_size)
    valid_loader = make_loader(valid_ds, cfg.batch_size * 2, runtime)

    optimizer = make_optimizer(model, cfg, runtime)
    steps_per_epoch = len(train_loader)
    total_steps = cfg.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps, round(cfg.warmup_epochs * steps_per_epoch)))
    scaler = torch.amp.GradScaler("cuda", enabled=runtime.amp_dtype == torch.float16)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    best_path, state_path = fold_dir / "best.safetensors", fold_dir / "last.pt"
    history: list[dict] = []
    best_score, best_epoch, start_epoch, elapsed_before = metric.worst, -1, 0, 0.0
    state = _load_state(state_path)
    best_info = _best_checkpoint_info(best_path)
    if state is not None and best_info is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch = state["epoch"] + 1
        history = list(state["history"])
        elapsed_before = float(state["train_seconds"])
        # the best checkpoint on disk is the truth: it may be newer than a fallback state
        best_epoch, best_score = best_info
        print(f"  {run_name} fold {fold}: resuming after epoch {start_epoch}/{cfg.epochs}")
    elif state is not None:
        print(f"  {run_name} fold {fold}: the best checkpoint is missing or damaged; the fold restarts")

    valid_y = data.y[valid_idx]
    started = time.perf_counter()
    bar = tqdm(total=total_steps, initial=start_epoch * steps_per_epoch, desc=f"{run_name} fold {fold}", unit="step",
               dynamic_ncols=True, mininterval=0.5)
    for epoch in range(start_epoch, cfg.epochs):
        if best_epoch >= 0 and cfg.patience and epoch - best_epoch > cfg.patience:
            break
        # every epoch's randomness derives from (seed, epoch): a resumed run replays it exactly
        generator.manual_seed(seed * 100 + epoch)
        torch.manual_seed(seed * 100 + epoch)
        train_tf.set_random_seed(seed * 100 + epoch)
        model.train()
        loss_sum = torch.zeros((), device=runtime.device)
        for step, (x, y) in enumerate(train_loader):
            x, y = _to_device(x, runtime), y.to(runtime.device, non_blocking=True)
            with _autocast(runtime):
                loss = criterion(model(x), y)
            scaler.scale(loss).backward()
            if cfg.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            loss_sum += loss.detach()
            if (step + 1) % cfg.log_every == 0:
                mean_loss = loss_sum.item() / (step + 1)  # the only host sync of the loop, every log_every steps
                _check_loss(mean_loss, epoch, step, cfg)
                bar.set_postfix(loss=f"{mean_loss:.4f}", refresh=False)
                bar.update(cfg.log_every)
        bar.update(steps_per_epoch - (steps_per_epoch // cfg.log_every) * cfg.log_every)
        train_loss = loss_sum.item() / max(1, steps_per_epoch)
        _check_loss(train_loss, epoch, steps_per_epoch - 1, cfg)
        probs = predict_views(model, valid_loader, views[:1], runtime)[0]
        score = metric(valid_y, probs)
        history.append({"epoch": epoch + 1, "train_loss": train_loss, "valid_score": score, "lr": scheduler.get_last_lr()[0]})
        if metric.is_better(score, best_score):
            best_score, best_epoch = score, epoch
            _save_best(best_path, model, epoch, score)
        bar.set_postfix(loss=f"{train_loss:.4f}", **{metric.name: f"{score:.4f}", "best": f"{best_score:.4f}"})
        _save_state(state_path, {"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                 "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                                 "best_score": float(best_score), "best_epoch": int(best_epoch), "history": history,
                                 "train_seconds": time.perf_counter() - started + elapsed_before})
    bar.close()
    train_seconds = time.perf_counter() - started + elapsed_before

    result = predict_fold(cfg, fold, data, classes, metric, runtime, fold_dir, views, view_names, model=model)
    result.update({"best_epoch": best_epoch + 1, "epochs_run": len(history), "train_seconds": train_seconds,
                   "history": history, "image_size": dcfg.image_size, "mean": dcfg.mean, "std": dcfg.std,
                   "interpolation": dcfg.interpolation, "params": count_parameters(model)})
    io.write_json(fold_dir / "fold.json", result)
    return result


def predict_fold(cfg: TrainConfig, fold: int, data: FoldData, classes: list[str], metric: Metric, runtime: Runtime, fold_dir: Path, views: list[Callable], view_names: list[str], model: torch.nn.Module | None = None) -> dict:
    """Load a fold's best checkpoint and predict its validation rows and the test set with TTA."""
    started = time.perf_counter()
    if model is None:
        model = create_model(cfg.model, len(classes), False, cfg.drop_rate, **cfg.model_kwargs)
        model.to(runtime.device)
        if runtime.channels_last:
            model.to(memory_format=torch.channels_last)
    model.load_state_dict(load_safetensors(str(fold_dir / "best.safetensors"), device=str(runtime.device)))
    dcfg = data_config(model, cfg.image_size, cfg.mean, cfg.std, cfg.interpolation)
    eval_tf = build_transform(dcfg.image_size, dcfg.mean, dcfg.std, dcfg.interpolation)
    valid_idx = np.flatnonzero(data.folds == fold)
    valid_loader = make_loader(ImageDataset(data.store, valid_idx, eval_tf, data.y), cfg.batch_size * 2, runtime)
    test_loader = make_loader(ImageDataset(data.test_store, np.arange(len(data.test_store)), eval_tf), cfg.batch_size * 2, runtime)

    valid_views = predict_views(model, valid_loader, views, runtime)
    test_views = predict_views(model, test_loader, views, runtime)
    valid_tta, valid_plain = valid_views.mean(axis=0), valid_views[0]
    valid_y = data.y[valid_idx]
    result = {
        "fold": fold,
        "score": metric(valid_y, valid_tta),
        "score_plain": metric(valid_y, valid_plain),
        "predict_seconds": time.perf_counter() - started,
        "tta": view_names,
        "finished": True,
    }
    _write_fold_predictions(fold_dir, valid_idx, valid_tta, valid_plain, test_views.mean(axis=0))
    return result


def _write_fold_predictions(fold_dir: Path, valid_idx: np.ndarray, valid_tta: np.ndarray, valid_plain: np.ndarray, test_tta: np.ndarray) -> None:
    # fold files are keyed by row index; the run-level files, keyed by id, are assembled from them
    columns = [str(k) for k in range(valid_tta.shape[1])]
    for name, rows, probs in (("valid", valid_idx, valid_tta), ("valid_plain", valid_idx, valid_plain),
                              ("test", np.arange(len(test_tta)), test_tta)):
        frame = pd.DataFrame(probs, columns=columns)
        frame.insert(0, "row", rows)
        io.write_parquet(fold_dir / f"{name}.parquet", frame)


def _read_fold_predictions(fold_dir: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    frame = pd.read_parquet(fold_dir / f"{name}.parquet")
    return frame["row"].to_numpy(), frame.drop(columns="row").to_numpy(dtype=np.float64)


# -- the stage -----------------------------------------------------------------------------

_STORES: dict[tuple, ImageStore] = {}


def image_store(paths: list[Path], desc: str) -> ImageStore:
    """One decoded store per image list per process: the demo's runs share it."""
    key = tuple(str(p) for p in paths)
    if key not in _STORES:
        _STORES[key] = ImageStore(paths, desc=desc)
    return _STORES[key]


def ensure_folds(config: Config, competition: Competition) -> tuple[np.ndarray, str]:
    """The saved folds; made now (and said so) if this competition has none yet."""
    try:
        return read_folds(config, competition)
    except FoldsError:
        if config.folds_csv.is_file():
            raise
        folds, fingerprint, _ = run_folds(config, competition)
        print(f"made folds: {config.folds_csv} (fingerprint {fingerprint})")
        return folds, fingerprint


def _view_list(cfg: TrainConfig) -> tuple[list[Callable], list[str]]:
    # the plain view always comes first: its predictions give the "CV without TTA" figure
    names = ["identity"] + [v for v in cfg.tta if v.strip() != "identity"]
    return [parse_view(v) for v in names], names


@dataclass
class RunSpec:
    """Everything a run needs, resolved and checked before any work."""

    name: str
    cfg: TrainConfig
    run_dir: Path
    settings_hash: str
    competition: Competition
    folds: np.ndarray
    fingerprint: str
    metric: Metric


def prepare_run(config: Config, model: str, overrides: list[str] | None = None, competition: Competition | None = None) -> RunSpec:
    """Resolve the recipe, check the model name, the weights file and the data: fail before any work."""
    name, cfg = resolve_train_config(config, model, overrides)
    resolve_model_name(cfg.model)
    if isinstance(cfg.pretrained, str):
        create_model(cfg.model, 2, cfg.pretrained, **cfg.model_kwargs)  # raises on a mismatched file
    competition = competition or load_competition(config)
    folds, fingerprint = ensure_folds(config, competition)
    settings = {"train": cfg.model_dump(exclude=set(_NOT_HASHED)), "competition": config.competition.model_dump(),
                "folds_fingerprint": fingerprint}
    return RunSpec(name, cfg, config.runs_dir / name, config_hash(settings), competition, folds, fingerprint,
                   get_metric(config.competition.metric))


def _fold_list(spec: RunSpec, folds_subset: list[int] | None) -> list[int]:
    all_folds = sorted(int(f) for f in np.unique(spec.folds))
    if not folds_subset:
        return all_folds
    bad = [f for f in folds_subset if f not in all_folds]
    if bad:
        raise ConfigError(f"FOLDS={','.join(map(str, folds_subset))}: fold(s) {bad} do not exist; folds are {all_folds}")
    return sorted(set(folds_subset))


def _base_meta(config: Config, spec: RunSpec) -> dict:
    return {
        "name": spec.name, "status": "running", "model": spec.cfg.model, "timm_name": resolve_model_name(spec.cfg.model),
        "family": model_family(spec.cfg.model), "competition": config.competition.name,
        "metric": config.competition.metric, "classes": spec.competition.classes,
        "folds_fingerprint": spec.fingerprint, "n_folds": int(len(np.unique(spec.folds))),
        "config_hash": spec.settings_hash, "config": spec.cfg.model_dump(), "seed": spec.cfg.seed,
        "versions": library_versions(), "code_version": code_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "folds_done": [],
    }


def run_train(config: Config, model: str, folds_subset: list[int] | None = None, force: bool = False, overrides: list[str] | None = None, competition: Competition | None = None) -> dict:
    """Train (or resume) one run on the chosen folds; assemble its OOF files when every fold is done.

    Returns
    -------
    The run's metadata (also in ``runs/<competition>/<run>/meta.json``).

    Raises
    ------
    StoreError
        If the run exists with other settings and ``force`` is not set, or another process holds it.
    """
    spec = prepare_run(config, model, overrides, competition)
    fold_ids = _fold_list(spec, folds_subset)
    with RunLock(spec.run_dir):
        meta = read_meta(spec.run_dir)
        if meta is not None and (force or meta.get("config_hash") != spec.settings_hash):
            if not force:
                raise StoreError(
                    f"run {spec.run_dir} exists with other settings (hash {meta.get('config_hash')} != {spec.settings_hash}); "
                    "pass FORCE=1 to retrain it from scratch, or change the recipe name"
                )
            for child in spec.run_dir.iterdir():
                if child.name != ".lock":
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
            meta = None
        if meta is not None and meta.get("status") == "finished" and all(f in meta["folds_done"] for f in fold_ids):
            print(f"{spec.name}: already finished (CV {meta['cv']:.4f}); pass FORCE=1 to retrain")
            return meta
        meta = meta or _base_meta(config, spec)
        meta["status"] = "running"
        io.write_json(spec.run_dir / "meta.json", meta)

        store = image_store(spec.competition.train_paths, "train")
        data = FoldData(store, image_store(spec.competition.test_paths, "test"), spec.competition.y, spec.folds)
        runtime = select_runtime(spec.cfg, store.in_memory)
        views, view_names = _view_list(spec.cfg)
        print(f"{spec.name}: {meta['timm_name']} on {runtime.device}"
              f"{' (' + str(runtime.amp_dtype).replace('torch.', '') + ' autocast)' if runtime.amp_dtype else ''}, "
              f"folds {fold_ids}, {spec.cfg.epochs} epochs, TTA views {view_names}")
        for fold in fold_ids:
            fold_dir = spec.run_dir / f"fold{fold}"
            if fold in meta["folds_done"]:
                print(f"  fold {fold}: done before, skipped")
                continue
            result = train_fold(spec.name, spec.cfg, fold, data, spec.competition.classes, spec.metric, runtime,
                                fold_dir, views, view_names)
            meta["folds_done"] = sorted(set(meta["folds_done"]) | {fold})
            io.write_json(spec.run_dir / "meta.json", meta)
            for state_file in (fold_dir / "last.pt", _previous(fold_dir / "last.pt")):
                state_file.unlink(missing_ok=True)  # the fold is final: its resume states are no longer needed
            print(f"  fold {fold}: {spec.metric.name} {result['score']:.4f} (no TTA {result['score_plain']:.4f}), "
                  f"best epoch {result['best_epoch']}/{result['epochs_run']}, {format_seconds(result['train_seconds'])}")
        meta = assemble_run(spec, meta)
    print(train_leaderboard(meta))
    return meta


def run_predict(config: Config, model: str, overrides: list[str] | None = None, competition: Competition | None = None) -> dict:
    """Re-predict a run's validation folds and the test set from its saved checkpoints (no training).

    This is how a Kaggle inference notebook works: checkpoints in, predictions out,
    with the TTA views of the current config.
    """
    spec = prepare_run(config, model, overrides, competition)
    with RunLock(spec.run_dir):
        meta = read_meta(spec.run_dir)
        if meta is None:
            raise StoreError(f"no run {spec.run_dir}; train it first with 'make train MODEL={model}'")
        if meta.get("config_hash") != spec.settings_hash:
            raise StoreError(f"run {spec.run_dir} was trained with other settings; predict with the same recipe and ARGS")
        store = image_store(spec.competition.train_paths, "train")
        data = FoldData(store, image_store(spec.competition.test_paths, "test"), spec.competition.y, spec.folds)
        runtime = select_runtime(spec.cfg, store.in_memory)
        views, view_names = _view_list(spec.cfg)
        for fold in meta["folds_done"]:
            fold_dir = spec.run_dir / f"fold{fold}"
            result = predict_fold(spec.cfg, fold, data, spec.competition.classes, spec.metric, runtime,
                                  fold_dir, views, view_names)
            fold_info = io.read_json(fold_dir / "fold.json")
            fold_info.update(result)
            io.write_json(fold_dir / "fold.json", fold_info)
            print(f"  fold {fold}: {spec.metric.name} {result['score']:.4f} (no TTA {result['score_plain']:.4f}), TTA {view_names}")
        meta = assemble_run(spec, meta)
    print(train_leaderboard(meta))
    return meta


def assemble_run(spec: RunSpec, meta: dict) -> dict:
    """Join the fold files into the run's id-keyed OOF and test files once every fold is done."""
    all_folds = sorted(int(f) for f in np.unique(spec.folds))
    fold_infos = {f: io.read_json(spec.run_dir / f"fold{f}" / "fold.json") for f in meta["folds_done"]}
    meta["folds"] = {str(f): {k: v for k, v in info.items() if k != "history"} for f, info in fold_infos.items()}
    if sorted(meta["folds_done"]) != all_folds:
        meta["status"] = "partial"
        io.write_json(spec.run_dir / "meta.json", meta)
        return meta
    classes = spec.competition.classes
    n_train = len(spec.folds)
    oof, oof_plain = np.zeros((n_train, len(classes))), np.zeros((n_train, len(classes)))
    test = np.zeros((len(spec.competition.test_ids), len(classes)))
    for fold in all_folds:
        fold_dir = spec.run_dir / f"fold{fold}"
        rows, probs = _read_fold_predictions(fold_dir, "valid")
        oof[rows] = probs
        rows, probs = _read_fold_predictions(fold_dir, "valid_plain")
        oof_plain[rows] = probs
        test += _read_fold_predictions(fold_dir, "test")[1] / len(all_folds)
    ids = spec.competition.train_ids
    io.write_parquet(spec.run_dir / "oof.parquet", prediction_frame(ids, oof, classes, spec.folds))
    io.write_parquet(spec.run_dir / "oof_plain.parquet", prediction_frame(ids, oof_plain, classes, spec.folds))
    io.write_parquet(spec.run_dir / "test.parquet", prediction_frame(spec.competition.test_ids, test, classes))
    y = spec.competition.y
    meta.update({
        "status": "finished",
        "cv": spec.metric(y, oof),
        "cv_plain": spec.metric(y, oof_plain),
        "train_seconds": sum(info["train_seconds"] for info in fold_infos.values()),
        "predict_seconds": sum(info["predict_seconds"] for info in fold_infos.values()),
        "params": next(iter(fold_infos.values()))["params"],
        "image_size": next(iter(fold_infos.values()))["image_size"],
        "tta": next(iter(fold_infos.values()))["tta"],
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    })
    meta["tta_gain"] = meta["cv"] - meta["cv_plain"]
    private = spec.competition.solution_labels()
    if private is not None:
        meta["private_lb"] = spec.metric(private, test)
    io.write_json(spec.run_dir / "meta.json", meta)
    return meta


def train_leaderboard(meta: dict) -> str:
    """The per-fold table printed after a run."""
    rows = []
    for fold, info in sorted(meta.get("folds", {}).items(), key=lambda kv: int(kv[0])):
        rows.append({"fold": int(fold), "best epoch": f"{info.get('best_epoch', '-')}/{info.get('epochs_run', '-')}",
                     "score": info["score"], "no TTA": info["score_plain"],
                     "train": format_seconds(info.get("train_seconds", 0.0)), "predict": format_seconds(info["predict_seconds"])})
    if meta.get("status") == "finished":
        rows.append({"fold": "CV", "best epoch": "", "score": meta["cv"], "no TTA": meta["cv_plain"],
                     "train": format_seconds(meta["train_seconds"]), "predict": format_seconds(meta["predict_seconds"])})
    title = f"{meta['name']} ({meta['timm_name']}, {meta['metric']}) - {meta['status']}"
    if "private_lb" in meta:
        title += f", private LB {meta['private_lb']:.4f}"
    return format_table(rows, title)
