"""The images a run reads: the decoded-image cache on disk, a store in memory, or files decoded on access.

One store per image set and input size per process, shared by every fold and every run of
the process (the demo trains three models on the same images).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pipeline.config import Config, ImageSizeChoice, TrainConfig
from pipeline.data import ImageStore
from pipeline.data.cache import ImageCache, cache_bytes, cache_key, cache_side, open_cache
from pipeline.vision.models import create_model, data_config, default_input_size

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


#: Above this factor between the input size and the images' median shorter side, a run warns that it upsamples
UPSAMPLE_WARN = 2.0
#: ... and below its inverse, that it throws most of the pixels away
DOWNSAMPLE_WARN = 4.0


def image_size_report(choice: ImageSizeChoice, target: int, data_side: int) -> tuple[str, list[str]]:
    """Say which input size a run uses and where it came from; warn when it rescales the images a lot.

    Parameters
    ----------
    choice : ImageSizeChoice
        From :func:`pipeline.config.image_size_choice`.
    target : int
        The input side the run uses (:func:`input_size`).
    data_side : int
        The training images' median shorter side (:func:`pipeline.data.median_short_side`); 0 if unknown.

    Returns
    -------
    (line, warnings)
        ``line`` is e.g. ``input 224 px (from recipe resnet18.yaml; the competition's image_size 32 is
        overridden)``; ``warnings`` has one text per problem found.
    """
    notes = []
    if choice.overrides_competition:
        notes.append(f"the competition's image_size {choice.competition_size} is overridden; "
                     "train.image_size_from: competition keeps it for every recipe")
    line = f"input {target} px (from {choice.source}{'; ' + '; '.join(notes) if notes else ''})"
    warnings = []
    if data_side:
        scale = target / data_side
        if scale > UPSAMPLE_WARN:
            warnings.append(
                f"input {target} px upsamples the images (median shorter side {data_side} px) {scale:.1f}x: "
                f"about {scale**2:.0f}x the compute for no new detail; for small images set "
                f"image_size: {data_side} (train.image_size_from: competition) with small_input: true "
                "(README: small images)"
            )
        elif scale < 1 / DOWNSAMPLE_WARN:
            warnings.append(
                f"input {target} px downsamples the images (median shorter side {data_side} px) "
                f"{1 / scale:.1f}x: fine detail is lost; a larger image_size may score better"
            )
    return line, warnings


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


def open_image_store(
    config: Config, cfg: TrainConfig, paths: list[Path], name: str, target: int, progress: bool = True
) -> ImageStore | ImageCache:
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
