"""The images a run reads: the decoded-image cache on disk, a store in memory, or files decoded on access.

One store per image set and input size per process, shared by every fold and every run of
the process (the demo trains three models on the same images).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pipeline.cache import ImageCache, cache_bytes, cache_key, cache_side, open_cache
from pipeline.config import Config, TrainConfig
from pipeline.data import ImageStore
from pipeline.models import create_model, data_config, default_input_size

_STORES: dict[tuple, ImageStore | ImageCache] = {}


def image_store(paths: list[Path], desc: str, preload: bool | str = "auto") -> ImageStore:
    """One in-memory store per image list per process: the demo's runs share it."""
    key = ("memory", preload, tuple(str(p) for p in paths))
    if key not in _STORES:
        _STORES[key] = ImageStore(paths, preload=preload, desc=desc)
    return _STORES[key]


def input_size(cfg: TrainConfig, n_classes: int) -> int:
    """The model's input side: the recipe's ``image_size``, else the model's default from timm's data config."""
    if cfg.image_size:
        return int(cfg.image_size)
    if not cfg.model_kwargs:  # kwargs such as img_size can change it: then only the built model knows
        size = default_input_size(cfg.model)
        if size:
            return size
    model = create_model(cfg.model, n_classes, False, **cfg.model_kwargs)
    return data_config(model).image_size


def cache_mode(cfg: TrainConfig, cache_dir: Path, n_images: int, target: int) -> str:
    """``train.cache`` resolved: ``auto`` is the disk cache when its folder has room for it, else memory."""
    if cfg.cache != "auto":
        return cfg.cache
    folder = cache_dir
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "memory"
    needed = cache_bytes(n_images, cache_side(target, cfg.cache_margin))
    return "disk" if needed * 1.1 < free and os.access(folder, os.W_OK) else "memory"


def open_image_store(config: Config, cfg: TrainConfig, paths: list[Path], name: str, target: int,
                     progress: bool = True) -> ImageStore | ImageCache:
    """The images a run reads, as ``train.cache`` says.

    ``disk`` (``auto`` where it fits): the decoded-image cache in ``<output_dir>/cache/``,
    built once per image set and input size and shared by every fold, model and process;
    ``memory``: decoded into this process's memory when they fit in 2 GiB, else decoded
    on access; ``off``: decoded on every access.
    """
    mode = cache_mode(cfg, config.cache_dir, len(paths), target)
    if mode != "disk" or not paths:
        return image_store(paths, name, preload="auto" if mode == "memory" else False)
    key = ("disk", str(config.cache_dir), cache_key(paths, target, cfg.cache_margin))  # a changed file is a new key
    if key not in _STORES:
        _STORES[key] = open_cache(paths, config.cache_dir, target, cfg.cache_margin, name, progress=progress)
    return _STORES[key]
