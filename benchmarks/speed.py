"""Benchmark of the training and prediction paths: does the data keep up with the model?

Usage::

    python -m benchmarks.speed [--model test_resnet --image-size 64 --batch-size 64 --images 384]
                             [--tta identity,hflip,...] [--device auto] [--compile] [--out bench/bench.json]

On whatever device is present, in one run, it measures:

- data loading alone (images/s, the training transform included): decoding real
  512x512 JPEG files it writes to a temporary folder, against reading the decoded-image
  cache (``pipeline/cache.py``), and the ratio; also the one-off cost of building the cache;
- the training step alone on synthetic tensors already on the device, and training end
  to end (cache -> DataLoader -> device -> step) twice: with the augmentation per image
  on the host (``train.augment``, albumentations) and per batch on the device
  (``train.device_augment``); each ratio end-to-end / step-alone (1.0: the data never
  starves the model);
- test-time augmentation (images/s per view): every view of a batch in one forward pass
  (``train.predict_views``) against the naive loop of one pass per view per image, and
  against one pass per view per batch;
- peak memory (process RSS; on a GPU also the CUDA allocator's peak) and, from FLOPs
  counted by ``torch.utils.flop_counter``, the achieved TFLOP/s and, on a GPU whose bf16
  peak is known, the model FLOPs utilisation (MFU).

Every timing excludes warm-up iterations and waits for the GPU (``torch.cuda.synchronize``)
before reading the clock. Each rate is the median of ``--repeats`` measurements; the
end-to-end / step ratio is the median of the ratios of alternated (paired) measurements. The
figures are printed as a table and written to ``--out`` (JSON, atomically). This is a
benchmark, not a test: it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
from PIL import Image

from pipeline.config import TrainConfig
from pipeline.core.io import write_json
from pipeline.core.report import format_table
from pipeline.data import ImageStore
from pipeline.data.cache import open_cache
from pipeline.train.dataset import ImageDataset
from pipeline.train.predict import CPU_PIXELS_PER_PASS, predict_views
from pipeline.train.runtime import Runtime, autocast, batch_to_device, make_loader, select_runtime, to_device
from pipeline.train.steps import make_optimizer, maybe_compile, train_step
from pipeline.train.timing import device_description, forward_flops, step_rate, synchronize
from pipeline.vision.device import DeviceTransform
from pipeline.vision.host import HostTransform
from pipeline.vision.models import create_model, data_config, resolve_model_name
from pipeline.vision.views import parse_view

DEFAULT_TTA = "identity;hflip;shift(2,0);shift(0,2);zoom(1.1)"
DEFAULT_AUGMENT = [{"HorizontalFlip": {"p": 0.5}},
                   {"Affine": {"scale": [0.9, 1.1], "rotate": [-15, 15], "p": 0.7}}]

# dense bf16 tensor-core peaks in TFLOP/s, by a substring of torch.cuda.get_device_name (vendor data sheets)
BF16_PEAK_TFLOPS = {
    "H200": 989.0, "GH200": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 989.0,
    "B200": 2250.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0, "L40": 181.0, "L4": 121.0, "A10G": 70.0, "A10": 125.0,
    "RTX 4090": 165.0, "RTX 3090": 71.0, "A6000": 155.0,
}


def write_jpegs(folder: Path, n: int, size: int = 512, quality: int = 90, seed: int = 0) -> list[Path]:
    """``n`` photo-like JPEG files of ``size`` x ``size`` (smooth colour fields plus sensor-like noise).

    Returns
    -------
    list of Path
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        coarse = rng.random((6, 6, 3)).astype(np.float32) * 255
        image = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
        image += rng.normal(0, 6, size=(size, size, 1)).astype(np.float32)
        path = folder / f"img_{i:05d}.jpg"
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path, quality=quality)
        paths.append(path)
    return paths


def loader_rate(loader, min_batches: int, warmup: int = 1) -> float:
    """Images per second delivered by ``loader`` (host side only), after ``warmup`` batches.

    Iterates over the loader as many times as needed to time ``min_batches`` batches.
    """
    seen, batches, start = 0, 0, None
    while batches < min_batches + warmup:
        for x, _ in loader:
            batches += 1
            if batches == warmup:
                start = time.perf_counter()
            elif batches > warmup:
                seen += x.shape[0]
            if batches >= min_batches + warmup:
                break
    return seen / (time.perf_counter() - start)


def end_to_end_rate(model, optimizer, scaler, criterion, runtime: Runtime, loader, inputs: DeviceTransform, steps: int,
                    warmup: int) -> float:
    """Training images per second from the DataLoader through ``inputs`` to the optimizer step (all batches full)."""
    model.train()
    done, seen, start = 0, 0, None
    while done < steps + warmup:
        for x, y in loader:
            x, y = batch_to_device(x, runtime, inputs, train=True), y.to(runtime.device, non_blocking=True)
            train_step(model, x, y, criterion, optimizer, scaler, runtime)
            done += 1
            if done == warmup:
                synchronize(runtime)
                start = time.perf_counter()
            elif done > warmup:
                seen += x.shape[0]
            if done >= steps + warmup:
                break
    synchronize(runtime)
    return seen / (time.perf_counter() - start)


@torch.inference_mode()
def naive_tta(model, x: torch.Tensor, views: list[Callable], runtime: Runtime, per_image: bool) -> torch.Tensor:
    """The loop batched TTA replaces: one forward pass per view per image (or per view per batch)."""
    model.eval()
    outputs = []
    for view in views:
        parts = x.split(1) if per_image else [x]
        with autocast(runtime):
            logits = torch.cat([model(view(part)) for part in parts])
        outputs.append(logits.float().softmax(dim=1))
    return torch.stack(outputs)


def _timed(fn: Callable[[], object], runtime: Runtime, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    synchronize(runtime)
    start = time.perf_counter()
    fn()
    synchronize(runtime)
    return time.perf_counter() - start


def bf16_peak_tflops(device_name: str) -> float | None:
    """The device's dense bf16 peak from :data:`BF16_PEAK_TFLOPS`, or None if unknown."""
    for key in sorted(BF16_PEAK_TFLOPS, key=len, reverse=True):
        if key in device_name:
            return BF16_PEAK_TFLOPS[key]
    return None


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):  # not on every platform
        return None


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def run(args: argparse.Namespace) -> dict:
    """Every measurement; returns the report that is printed and written."""
    cfg = TrainConfig.model_validate({
        "model": args.model, "image_size": args.image_size, "batch_size": args.batch_size, "device": args.device,
        "amp_dtype": args.amp_dtype, "compile": args.compile, "augment": DEFAULT_AUGMENT, "tta": args.tta.split(";"),
        "num_workers": "auto" if args.workers is None else args.workers})
    runtime = select_runtime(cfg, images_in_memory=True)
    if runtime.is_cuda:
        torch.cuda.reset_peak_memory_stats(runtime.device)
    n_classes = 10
    model = create_model(cfg.model, n_classes, False)
    dcfg = data_config(model, cfg.image_size)
    size = dcfg.image_size
    model.to(runtime.device)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    views = [parse_view(v) for v in args.tta.split(";")]
    report: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "device": device_description(runtime),
        "torch": torch.__version__,
        "model": args.model,
        "timm_name": resolve_model_name(args.model),
        "image_size": size,
        "batch_size": args.batch_size,
        "source_images": args.images,
        "source_size": args.source_size,
        "amp_dtype": str(runtime.amp_dtype).replace("torch.", "") if runtime.amp_dtype else None,
        "channels_last": runtime.channels_last,
        "compile": runtime.compile_mode,
        "num_workers": runtime.num_workers,
        "pin_memory": runtime.pin_memory,
        "tta_views": args.tta.split(";"),
        "repeats": args.repeats,
        "load_average_at_start": _load_average(),  # other work on a shared machine makes every figure noisy
    }

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        paths = write_jpegs(folder / "images", args.images, args.source_size)
        report["jpeg_write_seconds"] = time.perf_counter() - started
        report["jpeg_mean_kb"] = float(np.mean([p.stat().st_size for p in paths]) / 1024)
        started = time.perf_counter()
        cache = open_cache(paths, folder / "cache", size, cfg.cache_margin, "bench", progress=False)
        report["cache_build_seconds"] = time.perf_counter() - started
        report["cache_side"] = cache.side
        started = time.perf_counter()
        open_cache(paths, folder / "cache", size, cfg.cache_margin, "bench", progress=False)
        report["cache_reopen_seconds"] = time.perf_counter() - started

        # the same augmentation two ways: per image on the host, or per batch on the device
        train_tf = HostTransform(size, dcfg.interpolation, cfg.augment)
        host_inputs = DeviceTransform(dcfg.mean, dcfg.std, channels_last=runtime.channels_last)
        device_inputs = DeviceTransform(dcfg.mean, dcfg.std, cfg.augment, channels_last=runtime.channels_last)
        labels = np.arange(len(paths)) % n_classes
        raw_ds = ImageDataset(ImageStore(paths, preload=False), np.arange(len(paths)), train_tf, labels)
        cache_ds = ImageDataset(cache, np.arange(len(paths)), train_tf, labels)
        lean_ds = ImageDataset(cache, np.arange(len(paths)), HostTransform(size, dcfg.interpolation), labels)
        batches = max(2, args.images // args.batch_size - 1)

        def loader(ds):
            return make_loader(
                ds, args.batch_size, runtime, shuffle=True, generator=torch.Generator().manual_seed(0), drop_last=True
            )

        raw_rates, cache_rates = [], []
        for _ in range(args.repeats):
            raw_rates.append(loader_rate(loader(raw_ds), batches))
            cache_rates.append(loader_rate(loader(cache_ds), batches))
        report["data"] = {
            "raw_images_per_s": _median(raw_rates),
            "cache_images_per_s": _median(cache_rates),
            "raw_all": raw_rates,
            "cache_all": cache_rates,
        }
        report["data"]["cache_over_raw"] = report["data"]["cache_images_per_s"] / report["data"]["raw_images_per_s"]

        step_model = maybe_compile(model, runtime)
        optimizer = make_optimizer(model, cfg, runtime)
        scaler = torch.amp.GradScaler("cuda", enabled=runtime.amp_dtype == torch.float16)
        criterion = torch.nn.CrossEntropyLoss()
        host_loader, device_loader = loader(cache_ds), loader(lean_ds)
        step_rates, e2e_rates, device_rates = [], [], []
        for repeat in range(args.repeats):
            # alternated, so a slow patch of a shared machine hits all three alike
            warmup = args.warmup if repeat == 0 else 1
            step_rates.append(
                step_rate(
                    step_model,
                    optimizer,
                    scaler,
                    criterion,
                    runtime,
                    args.batch_size,
                    size,
                    n_classes,
                    args.steps,
                    warmup,
                )
            )
            e2e_rates.append(
                end_to_end_rate(
                    step_model, optimizer, scaler, criterion, runtime, host_loader, host_inputs, args.steps, warmup
                )
            )
            device_rates.append(
                end_to_end_rate(
                    step_model, optimizer, scaler, criterion, runtime, device_loader, device_inputs, args.steps, warmup
                )
            )
        # paired: each end-to-end measurement against the step-alone one taken just before it
        ratios = [e / s for e, s in zip(e2e_rates, step_rates)]
        device_ratios = [e / s for e, s in zip(device_rates, step_rates)]
        report["train"] = {
            "step_images_per_s": _median(step_rates),
            "step_all": step_rates,
            "end_to_end_images_per_s": _median(e2e_rates),
            "end_to_end_all": e2e_rates,
            "end_to_end_over_step": _median(ratios),
            "end_to_end_over_step_all": ratios,
            "device_augment_images_per_s": _median(device_rates),
            "device_augment_all": device_rates,
            "device_augment_over_step": _median(device_ratios),
            "device_augment_over_step_all": device_ratios,
        }
        del host_loader, device_loader

    x = to_device(torch.randn(args.tta_images, 3, size, size), runtime)
    n_views = len(views)
    batched, per_image, per_view = [], [], []
    for _ in range(args.repeats):
        batched.append(_timed(lambda: predict_views(model, [(x, None)], views, runtime), runtime))
        per_image.append(_timed(lambda: naive_tta(model, x, views, runtime, per_image=True), runtime))
        per_view.append(_timed(lambda: naive_tta(model, x, views, runtime, per_image=False), runtime))
    rate = lambda seconds: args.tta_images * n_views / seconds  # noqa: E731 - images per second per view
    check = predict_views(model, [(x, None)], views, runtime)
    naive = naive_tta(model, x, views, runtime, per_image=False).cpu().numpy()
    per_pass = (
        n_views if runtime.is_cuda else min(n_views, max(1, CPU_PIXELS_PER_PASS // (args.tta_images * size * size)))
    )
    report["tta"] = {
        "views": n_views,
        "images": args.tta_images,
        "views_per_pass": per_pass,
        "batched_images_per_s_per_view": rate(_median(batched)),
        "per_view_per_image_images_per_s_per_view": rate(_median(per_image)),
        "per_view_per_batch_images_per_s_per_view": rate(_median(per_view)),
        "max_abs_difference_batched_vs_loop": float(np.abs(check - naive).max()),
    }
    report["tta"]["batched_over_per_image_loop"] = _median(per_image) / _median(batched)
    report["tta"]["batched_over_per_view_loop"] = _median(per_view) / _median(batched)

    flops = forward_flops(model, size, runtime)
    peak = bf16_peak_tflops(torch.cuda.get_device_name(runtime.device)) if runtime.is_cuda else None
    achieved = None if flops is None else 3 * flops * report["train"]["step_images_per_s"] / 1e12
    report["compute"] = {
        "forward_gflops_per_image": None if flops is None else flops / 1e9,
        "train_tflops_achieved": achieved,  # forward + backward ~ 3x the forward FLOPs
        "bf16_peak_tflops": peak,
        "mfu": None if (achieved is None or peak is None) else achieved / peak,
    }
    report["load_average_at_end"] = _load_average()
    report["memory"] = {
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_cuda_mb": torch.cuda.max_memory_allocated(runtime.device) / 2**20 if runtime.is_cuda else None,
    }
    return report


def format_report(report: dict) -> str:
    """The figures as a table (pipeline.core.report.format_table)."""
    data, train, tta, compute, memory = (report[k] for k in ("data", "train", "tta", "compute", "memory"))
    rows = [
        (
            "data: decode JPEG + transform",
            f"{data['raw_images_per_s']:.1f}",
            "img/s",
            f"{report['source_size']}px JPEG, {report['num_workers']} workers",
        ),
        (
            "data: cache + transform",
            f"{data['cache_images_per_s']:.1f}",
            "img/s",
            f"cache {report['cache_side']}px, built once in {report['cache_build_seconds']:.1f}s",
        ),
        ("data: cache / decode", f"{data['cache_over_raw']:.2f}", "x", "goal on CPU: >= 5"),
        ("train: step alone", f"{train['step_images_per_s']:.1f}", "img/s", "synthetic tensors on the device"),
        (
            "train: end to end, host augment",
            f"{train['end_to_end_images_per_s']:.1f}",
            "img/s",
            "cache -> augment per image -> loader -> device -> step",
        ),
        (
            "train: end to end / step",
            f"{train['end_to_end_over_step']:.3f}",
            "",
            "median of paired repeats; 1.0: the data never starves the model",
        ),
        (
            "train: end to end, device augment",
            f"{train['device_augment_images_per_s']:.1f}",
            "img/s",
            "cache -> loader -> device -> augment per batch -> step",
        ),
        (
            "train: device augment e2e / step",
            f"{train['device_augment_over_step']:.3f}",
            "",
            "train.device_augment: the same steps on the device",
        ),
        (
            "tta: batched",
            f"{tta['batched_images_per_s_per_view']:.1f}",
            "img/s/view",
            f"{tta['views']} views, {tta['views_per_pass']} per forward pass",
        ),
        (
            "tta: loop per view per image",
            f"{tta['per_view_per_image_images_per_s_per_view']:.1f}",
            "img/s/view",
            "the naive loop",
        ),
        (
            "tta: loop per view per batch",
            f"{tta['per_view_per_batch_images_per_s_per_view']:.1f}",
            "img/s/view",
            "one pass per view",
        ),
        ("tta: batched / per-image loop", f"{tta['batched_over_per_image_loop']:.2f}", "x", "goal: >= 1.5"),
        ("tta: batched / per-view loop", f"{tta['batched_over_per_view_loop']:.2f}", "x", ""),
        ("memory: peak RSS", f"{memory['peak_rss_mb']:.0f}", "MB", "the whole process"),
    ]
    if memory["peak_cuda_mb"] is not None:
        rows.append(("memory: peak CUDA", f"{memory['peak_cuda_mb']:.0f}", "MB", "torch.cuda.max_memory_allocated"))
    if compute["train_tflops_achieved"] is not None:
        rows.append(
            (
                "compute: achieved",
                f"{compute['train_tflops_achieved']:.4f}",
                "TFLOP/s",
                f"{compute['forward_gflops_per_image']:.3f} GFLOP forward per image, x3 for training",
            )
        )
    if compute["mfu"] is not None:
        rows.append(
            ("compute: MFU", f"{compute['mfu']:.3f}", "", f"of the {compute['bf16_peak_tflops']:.0f} TFLOP/s bf16 peak")
        )
    elif report["device"].startswith("CPU"):
        rows.append(("compute: MFU", "-", "", "GPU only"))
    title = (
        f"make bench: {report['model']} ({report['timm_name']}) at {report['image_size']}px, batch "
        f"{report['batch_size']}, "
        f"on {report['device']}"
    )
    return format_table([{"measure": m, "value": v, "unit": u, "note": n} for m, v, u, n in rows], title)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="test_resnet", help="alias or timm name (default test_resnet)")
    parser.add_argument("--image-size", type=int, default=64, help="model input size (default 64)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--images", type=int, default=384, help="synthetic JPEG files written (default 384)")
    parser.add_argument("--source-size", type=int, default=512, help="side of the JPEG files (default 512)")
    parser.add_argument("--steps", type=int, default=16, help="timed training steps per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, autotuning)")
    parser.add_argument("--repeats", type=int, default=5, help="measurements per figure; the median is reported")
    parser.add_argument("--tta", default=DEFAULT_TTA, help=f"TTA views separated by ';' (default: {DEFAULT_TTA})")
    parser.add_argument("--tta-images", type=int, default=64, help="images per TTA measurement")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--amp-dtype", default="auto", choices=["auto", "bf16", "fp16"])
    parser.add_argument("--compile", action="store_true", help="torch.compile the training step")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: the pipeline's choice)")
    parser.add_argument("--out", default=None, help="write the figures to this JSON file")
    args = parser.parse_args(argv)
    for name in ("image_size", "batch_size", "images", "source_size", "steps", "repeats", "tta_images"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.images < 2 * args.batch_size:
        parser.error(
            f"--images {args.images} must be at least twice --batch-size {args.batch_size} (full batches are timed)"
        )
    started = time.perf_counter()
    report = run(args)
    report["command_seconds"] = time.perf_counter() - started
    print(format_report(report))
    print(
        f"bench finished in {report['command_seconds']:.0f}s; load average at start {report['load_average_at_start']}, "
        f"at end {report['load_average_at_end']} (other work on the machine makes the figures noisy)"
    )
    if args.out:
        write_json(args.out, report)
        print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
