"""The decoded-image cache: every image decoded and resized once, read by every later epoch, fold and model.

Decoding a 512x512 JPEG costs milliseconds; reading the same pixels back from a
memory-mapped array costs microseconds. The cache holds one image set (the train or
the test images of a competition) as a fixed-shape ``(N, S, S, 3)`` uint8 array in a
raw file, plus a JSON header::

    <output_dir>/cache/<competition>/<key>.u8     the pixels, rows in sorted-path order
    <output_dir>/cache/<competition>/<key>.json   shape, sizes, sources; written last

The side ``S`` is the model's input size times ``train.cache_margin`` (1 by default:
the loader's per-image transform resizes to the input size before any augmentation, so
at ``S`` equal to the input size it has no resize left to do), but never larger than
the largest source image: the cache never invents detail that a resize to the input
size does not need. The key hashes the source paths with their sizes
and modification times, the input size and the margin, so every architecture trained
at that size shares one cache, and a changed, added or removed source file makes a
new key (the stale cache of the same image set is then deleted).

The header is written atomically after the pixel file is complete and renamed into
place, so a cache whose build was interrupted is never read: it is rebuilt. Two
processes that need the same cache at once (two jobs, or the ranks of a distributed
run) take a file lock: one builds, the others wait and then read it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
from PIL import Image

from pipeline.core import io
from pipeline.core.report import progress_bar
from pipeline.data import DataError, decode_image

CACHE_VERSION = 1
DEFAULT_MARGIN = 1.0


class CacheError(DataError):
    """The cache cannot be built or read; the message names the file and the fix."""


def cache_side(target: int, margin: float = DEFAULT_MARGIN, largest_source_side: int | None = None) -> int:
    """The cached image side ``S`` for a model input size.

    Parameters
    ----------
    target : int
        The model's input side (the recipe's ``image_size`` or the model's default).
    margin : float
        How much larger than ``target`` the cache keeps images (>= 1); above 1 the loader
        resizes every image again, each epoch.
    largest_source_side : int, optional
        The longest side among the source images: ``S`` never exceeds it (no upscaling
        beyond what the transform needs), and never falls below ``target``.

    Returns
    -------
    int
    """
    if target < 1:
        raise ValueError(f"cache target size must be positive, got {target}")
    if margin < 1:
        raise ValueError(f"cache margin must be >= 1 (1 keeps the input size), got {margin}")
    side = math.ceil(round(target * margin, 6))
    if largest_source_side is not None:
        side = min(side, int(largest_source_side))
    return max(side, int(target))


def resize_for_cache(image: np.ndarray, side: int) -> np.ndarray:
    """Resize an RGB uint8 image to ``(side, side, 3)``: area averaging to shrink, bicubic to enlarge."""
    h, w = image.shape[:2]
    if (h, w) == (side, side):
        return image
    interpolation = cv2.INTER_AREA if h >= side and w >= side else cv2.INTER_CUBIC
    return cv2.resize(image, (side, side), interpolation=interpolation)


def source_signature(paths: list[Path]) -> list[tuple[str, int, int]]:
    """``(path, size in bytes, mtime in ns)`` of every source, sorted by path.

    Raises
    ------
    CacheError
        If a source file is missing.
    """
    signature = []
    for path in sorted(str(p) for p in paths):
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            raise CacheError(f"image {path} does not exist; check the competition's image paths") from None
        signature.append((path, int(stat.st_size), int(stat.st_mtime_ns)))
    return signature


def cache_key(paths: list[Path], target: int, margin: float = DEFAULT_MARGIN) -> str:
    """The cache's name: a hash of the sources (paths, sizes, mtimes), the input size and the margin."""
    blob = json.dumps({"version": CACHE_VERSION, "sources": source_signature(paths), "target": int(target),
                       "margin": float(margin)}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


class ImageCache:
    """Images by index from a built cache: ``cache[i]`` is the ``i``-th path's image, ``(S, S, 3)`` uint8.

    The same interface as :class:`pipeline.data.ImageStore` (``len``, indexing,
    ``in_memory``), so :class:`pipeline.data.ImageDataset` reads either.

    Rows are read from the file with ``preadv`` into the batch's own array, not through a
    memory map: the pixels then stay in the kernel's page cache (shared, reclaimable, as
    JPEG files read by a data loader are) instead of counting in the process's resident
    memory, 276 MB for CIFAR's 10,000 images cached at 96 px. Reading a row from the page
    cache costs microseconds, as a mapped row does. Where ``preadv`` is missing (Windows)
    the file is memory-mapped read-only. A pickled cache (a DataLoader worker) reopens the
    file instead of copying the pixels.
    """

    def __init__(self, data_path: Path, header: dict, paths: list[Path]):
        self.data_path = Path(data_path)
        self.header = header
        self.paths = list(paths)
        self.side = int(header["side"])
        order = {path: row for row, path in enumerate(header["sources"])}
        self._rows = np.array([order[str(p)] for p in self.paths], dtype=np.int64)
        self._array: np.ndarray | None = None
        self._fd: int | None = None

    @property
    def array(self) -> np.ndarray:
        """The whole cache memory-mapped read-only (the fallback reader; it counts in resident memory once read)."""
        if self._array is None:
            self._array = np.memmap(self.data_path, dtype=np.uint8, mode="r",
                                    shape=(int(self.header["n"]), self.side, self.side, 3))
        return self._array

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def in_memory(self) -> bool:
        """True: images are already decoded, reading one costs a memory copy (page cache)."""
        return True

    def __getitem__(self, index: int) -> np.ndarray:
        return self.take(np.array([index]))[0]

    def take(self, indices: np.ndarray) -> np.ndarray:
        """Several images at once, ``(n, S, S, 3)`` uint8 in the order asked: a new writable array."""
        rows = self._rows[np.asarray(indices, dtype=np.int64)]
        if not hasattr(os, "preadv"):
            return np.asarray(self.array[rows])  # fancy indexing copies: writable, not a view of the map
        if self._fd is None:
            self._fd = os.open(self.data_path, os.O_RDONLY)
        out = np.empty((len(rows), self.side, self.side, 3), dtype=np.uint8)
        row_bytes = self.side * self.side * 3
        flat = out.reshape(len(rows), row_bytes)
        start = 0
        # consecutive rows (validation and test read in order) in one call, shuffled training rows one by one
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        for stop in [*breaks.tolist(), len(rows)]:
            wanted = (stop - start) * row_bytes
            got = os.preadv(self._fd, [memoryview(flat[start:stop]).cast("B")], int(rows[start]) * row_bytes)
            if got != wanted:
                raise CacheError(f"{self.data_path} is shorter than its header says; delete it to rebuild the cache")
            start = stop
        return out

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_array"] = None
        state["_fd"] = None
        return state

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)


def _header_ok(header_path: Path, data_path: Path, key: str) -> dict | None:
    """The header if the cache it describes is complete, else None."""
    if not header_path.is_file() or not data_path.is_file():
        return None
    try:
        header = io.read_json(header_path)
        expected = int(header["n"]) * int(header["side"]) ** 2 * 3
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if header.get("version") != CACHE_VERSION or header.get("key") != key or data_path.stat().st_size != expected:
        return None
    return header


@contextlib.contextmanager
def _build_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes on this machine (POSIX ``flock``); none where unavailable."""
    try:
        import fcntl
    except ImportError:  # Windows: concurrent builders each write their own temporary file; the last rename wins
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def largest_side(paths: list[str]) -> int:
    """The longest side among the images (headers only), which caps the cache side (:func:`cache_side`)."""
    largest = 0
    for path in paths:
        try:
            with Image.open(path) as image:
                largest = max(largest, *image.size)
        except OSError as exc:
            raise CacheError(f"cannot read image {path}: {exc}") from None
    return largest


def cache_bytes(n_images: int, side: int) -> int:
    """Bytes a cache of ``n_images`` at ``side`` takes on disk."""
    return int(n_images) * int(side) ** 2 * 3


def build_cache(paths: list[Path], cache_dir: Path, target: int, margin: float = DEFAULT_MARGIN, name: str = "images",
                workers: int | None = None, progress: bool = True) -> tuple[Path, dict]:
    """Decode and resize every image once into ``<cache_dir>/<key>.u8``; write the header last.

    Parameters
    ----------
    paths : list of Path
        The image set, in any order (rows are stored in sorted-path order).
    cache_dir : Path
        The folder of this competition's caches.
    target, margin : int, float
        The model's input size and the margin; see :func:`cache_side`.
    name : str
        What the images are ("train", "test"): recorded in the header, shown in the progress bar.
    workers : int, optional
        Decoding threads (PIL and OpenCV release the GIL); default: the CPU count, at most 8.

    Returns
    -------
    (data_path, header)

    Raises
    ------
    CacheError
        If there is not enough disk space or an image cannot be decoded.
    """
    key = cache_key(paths, target, margin)
    sources = [s[0] for s in source_signature(paths)]
    side = cache_side(target, margin, largest_side(sources))
    needed = cache_bytes(len(sources), side)
    cache_dir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(cache_dir).free
    if needed > free:
        raise CacheError(
            f"the {name} image cache needs {needed / 2**30:.1f} GiB in {cache_dir} but {free / 2**30:.1f} GiB are "
            "free; "
            "free some space, set output_dir to a larger disk, or set train.cache=memory (or off)"
        )
    data_path, header_path = cache_dir / f"{key}.u8", cache_dir / f"{key}.json"
    for stale in cache_dir.glob(f".{key}.u8.*.tmp"):
        stale.unlink(missing_ok=True)  # a build that was killed: we hold the key's lock, nobody else writes these
    tmp = cache_dir / f".{key}.u8.{os.getpid()}.tmp"
    started = time.perf_counter()
    try:
        _fill(tmp, sources, side, name, workers or min(8, os.cpu_count() or 1), progress)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, io._FILE_MODE)
        os.replace(tmp, data_path)
    finally:
        tmp.unlink(missing_ok=True)
    header = {
        "version": CACHE_VERSION,
        "key": key,
        "name": name,
        "n": len(sources),
        "side": side,
        "dtype": "uint8",
        "layout": "NHWC",
        "target": int(target),
        "margin": float(margin),
        "bytes": needed,
        "build_seconds": round(time.perf_counter() - started, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "sources": sources,
    }
    io.write_json(header_path, header)  # last: only now is the cache visible to readers
    _remove_stale(cache_dir, header)
    return data_path, header


def _remove_stale(cache_dir: Path, header: dict) -> None:
    """Delete older caches of the same image set and size (their sources have changed since)."""
    for other in cache_dir.glob("*.json"):
        if other.stem == header["key"]:
            continue
        try:
            info = io.read_json(other)
        except (OSError, ValueError):
            continue
        if (info.get("name"), info.get("target"), info.get("margin")) == (
            header["name"],
            header["target"],
            header["margin"],
        ):
            other.unlink(missing_ok=True)  # the header first: a reader never sees a header without its data
            other.with_suffix(".u8").unlink(missing_ok=True)
            (cache_dir / f".{other.stem}.lock").unlink(missing_ok=True)


def _fill(path: Path, sources: list[str], side: int, name: str, workers: int, progress: bool) -> None:
    """Decode, resize and write every source into a new ``(N, side, side, 3)`` uint8 file at ``path``."""
    array = np.memmap(path, dtype=np.uint8, mode="w+", shape=(len(sources), side, side, 3))

    def load(row: int) -> None:
        array[row] = resize_for_cache(decode_image(Path(sources[row])), side)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in progress_bar(
            pool.map(load, range(len(sources))),
            total=len(sources),
            desc=f"cache {name} {side}px",
            leave=False,
            mininterval=1.0,
            enabled=progress,
        ):
            pass
    array.flush()


def open_cache(
    paths: list[Path],
    cache_dir: Path,
    target: int,
    margin: float = DEFAULT_MARGIN,
    name: str = "images",
    workers: int | None = None,
    progress: bool = True,
) -> ImageCache:
    """The cache of these images at this size: read if it exists and is complete, built once otherwise.

    Parameters
    ----------
    paths : list of Path
        The image set; ``cache[i]`` is ``paths[i]``'s image.
    cache_dir : Path
        ``<output_dir>/cache/<competition>``.
    target, margin, name, workers, progress
        See :func:`build_cache`.

    Returns
    -------
    ImageCache
    """
    key = cache_key(paths, target, margin)
    data_path, header_path = cache_dir / f"{key}.u8", cache_dir / f"{key}.json"
    header = _header_ok(header_path, data_path, key)
    if header is None:
        with _build_lock(cache_dir / f".{key}.lock"):
            header = _header_ok(header_path, data_path, key)  # another process may have built it meanwhile
            if header is None:
                header_path.unlink(missing_ok=True)
                _, header = build_cache(paths, cache_dir, target, margin, name, workers, progress)
    return ImageCache(data_path, header, paths)
