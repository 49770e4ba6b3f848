"""`make bench` at a tiny size: every figure is there, positive and consistent (no timing is asserted)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from benchmarks import speed as bench


def test_bench_writes_every_figure(tmp_path, capsys):
    out = tmp_path / "bench" / "bench.json"
    report = bench.main(["--model", "test_resnet", "--image-size", "32", "--images", "24", "--batch-size", "8",
                         "--source-size", "96", "--steps", "2", "--warmup", "1", "--repeats", "1", "--tta-images", "4",
                         "--out", str(out)])
    printed = capsys.readouterr().out
    for line in (
        "data: cache / decode",
        "train: end to end / step",
        "tta: batched / per-image loop",
        "memory: peak RSS",
    ):
        assert line in printed
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert report["image_size"] == 32 and report["cache_side"] == 32 and report["source_images"] == 24
    data, train, tta = report["data"], report["train"], report["tta"]
    for value in (
        data["raw_images_per_s"],
        data["cache_images_per_s"],
        train["step_images_per_s"],
        train["end_to_end_images_per_s"],
        tta["batched_images_per_s_per_view"],
        tta["per_view_per_image_images_per_s_per_view"],
        tta["per_view_per_batch_images_per_s_per_view"],
        report["memory"]["peak_rss_mb"],
        report["compute"]["forward_gflops_per_image"],
        report["cache_build_seconds"],
    ):
        assert value > 0
    assert data["cache_over_raw"] == pytest.approx(data["cache_images_per_s"] / data["raw_images_per_s"])
    assert train["end_to_end_over_step"] == pytest.approx(
        train["end_to_end_images_per_s"] / train["step_images_per_s"]
    )  # 1 repeat
    # the batched views and the naive loop are the same predictions, only faster
    assert tta["views"] == 5 and tta["max_abs_difference_batched_vs_loop"] < 1e-5
    assert report["memory"]["peak_cuda_mb"] is None and report["compute"]["mfu"] is None  # CPU: no GPU figures


def test_bench_images_are_realistic_jpegs(tmp_path):
    paths = bench.write_jpegs(tmp_path, 3, size=512)
    with Image.open(paths[0]) as image:
        assert image.format == "JPEG" and image.size == (512, 512) and image.mode == "RGB"
    assert all(20_000 < p.stat().st_size < 300_000 for p in paths)  # photo-like sizes, not flat colour


def test_bench_peak_table():
    assert bench.bf16_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0 and bench.bf16_peak_tflops("NVIDIA H200") == 989.0
    assert bench.bf16_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert bench.bf16_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert bench.bf16_peak_tflops("NVIDIA L4") == 121.0 and bench.bf16_peak_tflops("NVIDIA L40S") == 362.0
    assert bench.bf16_peak_tflops("Some Future GPU") is None


def test_bench_refuses_too_few_images(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--images", "8", "--batch-size", "8"])
    assert "at least twice --batch-size" in capsys.readouterr().err
