"""The decoded-image cache: built once, reused by every later reader, invalidated by a changed source, never half-read.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from pipeline.config import load_config, parse_overrides, resolve_train_config
from pipeline.data import ImageStore, load_competition
from pipeline.data import cache as cache_module
from pipeline.data.cache import ImageCache, cache_key, cache_side, open_cache
from pipeline.data.images import open_image_store


def _images(folder: Path, sizes: list[tuple[int, int]], seed: int = 0) -> list[Path]:
    """JPEG and PNG files of the given (width, height), with distinct random content."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (w, h) in enumerate(sizes):
        pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        path = folder / (f"img{i}.png" if i % 2 else f"img{i}.jpg")
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def _count_decodes(monkeypatch) -> list[Path]:
    calls: list[Path] = []
    real = cache_module.decode_image

    def counting(path):
        calls.append(Path(path))
        return real(path)

    monkeypatch.setattr(cache_module, "decode_image", counting)
    return calls


def test_cache_side_has_a_margin_but_never_upscales_beyond_the_input_size():
    assert cache_side(224) == 224  # by default the input size: the loader has no resize left to do
    assert cache_side(224, 1.15) == 258
    assert cache_side(32, 1.15) == 37
    assert cache_side(224, 1.0) == 224
    assert cache_side(224, 1.15, largest_source_side=240) == 240  # no invented detail above the sources
    assert cache_side(224, 1.15, largest_source_side=100) == 224  # never below what the transform needs
    with pytest.raises(ValueError, match="margin must be >= 1"):
        cache_side(224, 0.9)


def test_same_pixels_as_decoding_directly_at_that_size(tmp_path):
    # shuffled order, mixed formats and sizes: larger sources are area-averaged down, smaller ones enlarged
    paths = _images(tmp_path / "img", [(120, 90), (20, 20), (64, 48), (200, 200), (37, 37)])
    paths = [paths[i] for i in (3, 0, 4, 1, 2)]
    cache = open_cache(paths, tmp_path / "cache", target=32, margin=1.15, progress=False)
    assert cache.side == 37 and len(cache) == 5 and cache.in_memory
    for i, path in enumerate(paths):
        with Image.open(path) as image:
            decoded = np.asarray(image.convert("RGB"))
        h, w = decoded.shape[:2]
        if (h, w) == (37, 37):
            expected = decoded
        else:
            interpolation = cv2.INTER_AREA if h >= 37 and w >= 37 else cv2.INTER_CUBIC
            expected = cv2.resize(decoded, (37, 37), interpolation=interpolation)
        got = cache[i]
        assert got.shape == (37, 37, 3) and got.dtype == np.uint8
        np.testing.assert_array_equal(got, expected, err_msg=str(path))
    got[:] = 0  # a copy: the reader may change it without touching the cache
    assert cache[len(paths) - 1].any()


def test_rows_are_read_without_mapping_the_file_into_the_process(tmp_path):
    # the pixels stay in the page cache, not in the process's resident memory (CIFAR at 96 px: 276 MB)
    paths = _images(tmp_path / "img", [(40, 40)] * 9)
    cache = open_cache(paths, tmp_path / "cache", target=16, progress=False)
    order = np.array([4, 5, 6, 0, 8, 7, 1, 2, 3])  # shuffled rows and runs of consecutive ones
    got = cache.take(order)
    assert got.shape == (9, 16, 16, 3) and got.flags.writeable
    maps = Path("/proc/self/maps")
    if maps.exists():
        assert str(cache.data_path) not in maps.read_text()
    np.testing.assert_array_equal(got, np.asarray(cache.array)[cache._rows[order]])  # the same pixels as a map
    np.testing.assert_array_equal(cache[7], got[5])
    cache.data_path.write_bytes(cache.data_path.read_bytes()[:-10])  # truncated behind the reader's back
    fresh = ImageCache(cache.data_path, cache.header, paths)
    with pytest.raises(cache_module.CacheError, match="shorter than its header"):
        fresh.take(np.array([8]))


def test_digits_cache_is_identical_to_the_decoded_images(small_config):
    # 32-px sources at a 32-px input: the cache changes no pixel, so runs with and without it learn the same
    config = load_config(small_config)
    competition = load_competition(config)
    _, cfg = resolve_train_config(config, "digits_resnet")
    store = open_image_store(config, cfg, competition.train_paths, "train", 32, progress=False)
    assert isinstance(store, ImageCache) and store.side == 32
    plain = ImageStore(competition.train_paths, preload=False)
    for i in range(len(plain)):
        np.testing.assert_array_equal(store[i], plain[i])


def test_built_once_then_reused_by_another_reader_and_another_model(small_config, monkeypatch):
    config = load_config(small_config)
    competition = load_competition(config)
    _, resnet = resolve_train_config(config, "digits_resnet")
    _, effnet = resolve_train_config(config, "digits_effnet")
    decodes = _count_decodes(monkeypatch)
    first = open_cache(competition.train_paths, config.cache_dir, 32, resnet.cache_margin, "train", progress=False)
    assert len(decodes) == len(competition.train_paths)
    headers = sorted(config.cache_dir.glob("*.json"))
    assert [h.stem for h in headers] == [first.data_path.stem]

    decodes.clear()
    again = open_cache(competition.train_paths, config.cache_dir, 32, resnet.cache_margin, "train", progress=False)
    other_model = open_image_store(config, effnet, competition.train_paths, "train", 32, progress=False)
    assert decodes == []  # nothing decoded: both read the file the first build wrote
    assert again.data_path == first.data_path == other_model.data_path
    np.testing.assert_array_equal(again[5], first[5])

    # another input size is another cache; the first one stays
    open_cache(competition.train_paths, config.cache_dir, 24, resnet.cache_margin, "train", progress=False)
    assert len(decodes) == len(competition.train_paths)
    assert len(list(config.cache_dir.glob("*.json"))) == 2


def test_invalidated_when_a_source_changes(tmp_path, monkeypatch):
    paths = _images(tmp_path / "img", [(50, 50)] * 4)
    old = open_cache(paths, tmp_path / "cache", 32, progress=False)
    old_key, old_pixels = old.data_path.stem, old[2].copy()

    Image.fromarray(np.full((50, 50, 3), 7, dtype=np.uint8)).save(paths[2])
    os.utime(paths[2], ns=(os.stat(paths[2]).st_atime_ns, os.stat(paths[2]).st_mtime_ns + 10**9))
    assert cache_key(paths, 32) != old_key
    decodes = _count_decodes(monkeypatch)
    new = open_cache(paths, tmp_path / "cache", 32, progress=False)
    assert len(decodes) == 4 and new.data_path.stem != old_key
    assert not np.array_equal(new[2], old_pixels)
    np.testing.assert_array_equal(new[2], np.full((32, 32, 3), 7, dtype=np.uint8))
    # the stale cache of the same image set and size is gone, with its header
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")) == [
        f"{new.data_path.stem}.json",
        f"{new.data_path.stem}.u8",
    ]

    # a removed or added file changes the key as well
    assert cache_key(paths[:3], 32) != cache_key(paths, 32)


def test_a_half_built_cache_is_never_used(tmp_path, monkeypatch):
    paths = _images(tmp_path / "img", [(40, 40)] * 6)
    cache_dir = tmp_path / "cache"
    real_fill = cache_module._fill

    def crash_half_way(path, sources, side, name, workers, progress):
        array = np.memmap(path, dtype=np.uint8, mode="w+", shape=(len(sources), side, side, 3))
        array[: len(sources) // 2] = 255
        array.flush()
        raise KeyboardInterrupt  # the build is interrupted

    monkeypatch.setattr(cache_module, "_fill", crash_half_way)
    with pytest.raises(KeyboardInterrupt):
        open_cache(paths, cache_dir, 32, progress=False)
    assert not list(cache_dir.glob("*.json")) and not list(cache_dir.glob("*.u8"))  # no header, no data file
    assert not list(cache_dir.glob("*.tmp"))

    monkeypatch.setattr(cache_module, "_fill", real_fill)
    cache = open_cache(paths, cache_dir, 32, progress=False)
    with Image.open(paths[0]) as image:
        np.testing.assert_array_equal(
            cache[0], cv2.resize(np.asarray(image.convert("RGB")), (32, 32), interpolation=cv2.INTER_AREA)
        )

    # a data file that lost its tail, or a header that lost its data, is rebuilt, not read
    data_path, header_path = cache.data_path, cache.data_path.with_suffix(".json")
    data_path.write_bytes(data_path.read_bytes()[:100])
    decodes = _count_decodes(monkeypatch)
    rebuilt = open_cache(paths, cache_dir, 32, progress=False)
    assert len(decodes) == 6 and rebuilt.array.shape == (6, 32, 32, 3)
    header_path.write_text("{not json")
    decodes.clear()
    open_cache(paths, cache_dir, 32, progress=False)
    assert len(decodes) == 6


def test_a_pickled_cache_reopens_the_file_instead_of_copying_pixels(tmp_path):
    paths = _images(tmp_path / "img", [(300, 300)] * 8)
    cache = open_cache(paths, tmp_path / "cache", 224, progress=False)
    cache[0]  # maps the file
    blob = pickle.dumps(cache)
    assert len(blob) < 20_000 < cache.array.nbytes  # DataLoader workers get the path, not 1.4 MB of pixels
    copy = pickle.loads(blob)
    np.testing.assert_array_equal(copy[3], cache[3])


def _log_line(log: Path, line: str) -> None:
    with open(log, "a") as handle:   # one short append: whole lines even from several processes
        handle.write(f"{line}\n")


def _open_in_child(paths, cache_dir, log, n_children):
    """open_cache in a child that logs each completeness check (``check <pid> miss|hit``) and its build; the build
    starts only once every child has logged a check, so all of them look for the cache while it does not exist."""
    import time

    real_check, real_build = cache_module._header_ok, cache_module.build_cache

    def logged_check(*args, **kwargs):
        header = real_check(*args, **kwargs)
        _log_line(log, f"check {os.getpid()} {'miss' if header is None else 'hit'}")
        return header

    def held_build(*args, **kwargs):
        deadline = time.monotonic() + 60
        while len({line.split()[1] for line in log.read_text().splitlines() if line.startswith("check")}) < n_children:
            assert time.monotonic() < deadline, "the other processes never looked for the cache"
            time.sleep(0.01)
        _log_line(log, f"build {os.getpid()} start")
        result = real_build(*args, **kwargs)
        _log_line(log, f"build {os.getpid()} end")
        return result

    cache_module._header_ok = logged_check
    cache_module.build_cache = held_build
    open_cache(paths, cache_dir, 32, progress=False)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the build lock is POSIX flock")
def test_two_processes_at_once_build_it_once(tmp_path):
    paths = _images(tmp_path / "img", [(64, 64)] * 40)
    log = tmp_path / "builds.log"
    log.touch()
    context = multiprocessing.get_context("fork")
    children = [context.Process(target=_open_in_child, args=(paths, tmp_path / "cache", log, 3)) for _ in range(3)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=120)
        assert child.exitcode == 0
    lines = [line.split() for line in log.read_text().splitlines()]
    builds = [pid for kind, pid, what in lines if kind == "build" and what == "start"]
    assert len(builds) == 1  # one built it, the others waited and read it
    assert len(list((tmp_path / "cache").glob("*.u8"))) == 1
    # they overlapped: every process found no cache before the build began (the builder held it until then)
    start = lines.index(["build", builds[0], "start"])
    end = lines.index(["build", builds[0], "end"])
    assert {pid for kind, pid, what in lines[:start] if kind == "check" and what == "miss"} == \
        {str(child.pid) for child in children}
    # and the lock made the others wait: each one's check under the lock came after the build ended, and found it
    for child in children:
        if str(child.pid) == builds[0]:
            continue
        checks = [(i, what) for i, (kind, pid, what) in enumerate(lines) if kind == "check" and pid == str(child.pid)]
        assert [what for _, what in checks] == ["miss", "hit"] and checks[1][0] > end


def test_store_modes(small_config, monkeypatch):
    config = load_config(small_config, parse_overrides(["train.cache=memory"]))
    competition = load_competition(config)
    _, cfg = resolve_train_config(config, "digits_resnet")
    store = open_image_store(config, cfg, competition.test_paths, "test", 32)
    assert isinstance(store, ImageStore) and store.in_memory
    _, off = resolve_train_config(config, "digits_resnet", parse_overrides(["train.cache=off"]))
    store = open_image_store(config, off, competition.test_paths, "test", 32)
    assert isinstance(store, ImageStore) and not store.in_memory
    # auto: the disk cache where its folder has room, memory where it has not
    _, auto = resolve_train_config(config, "digits_resnet", parse_overrides(["train.cache=auto"]))
    assert isinstance(open_image_store(config, auto, competition.test_paths, "test", 32, progress=False), ImageCache)

    class Full:
        free = 1000

    monkeypatch.setattr("shutil.disk_usage", lambda path: Full())
    assert isinstance(open_image_store(config, auto, competition.train_paths, "train", 32), ImageStore)
