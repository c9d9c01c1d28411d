"""IDX image datasets: reading, checking, locating and downloading them.

MNIST ships inside the package (``stdbp/datasets/mnist``), so a fresh machine needs no network.
Fashion-MNIST is read from the Debian package ``dataset-fashion-mnist``. Any directory of the
four standard IDX files (gzip or raw) works through ``data_dir``.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import logging
import math
import os
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError

if TYPE_CHECKING:
    import numpy.typing as npt

log = logging.getLogger(__name__)

__all__ = ["read_idx", "load_dataset", "dataset_dir", "download", "DATASETS", "Split"]

_IDX_DTYPES: dict[int, npt.DTypeLike] = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass(frozen=True)
class DatasetInfo:
    """Where a named dataset lives, and how to fetch and check it."""

    name: str
    default_dir: Path
    urls: tuple[str, ...]
    #: sha256 of each *decompressed* file, so that any gzip of the same data verifies.
    sha256: dict[str, str]
    hint: str


DATASETS = {
    "mnist": DatasetInfo(
        "mnist",
        Path(str(importlib.resources.files("stdbp"))) / "datasets" / "mnist",  # package data
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/"),
        {
            "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
        "reinstall stdbp, or run 'stdbp download mnist --out DIR' and pass --data-dir DIR",
    ),
    "fashion-mnist": DatasetInfo(
        "fashion-mnist",
        Path("/usr/share/datasets/fashion-mnist"),
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        {
            "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        "install the Debian package ('apt-get install dataset-fashion-mnist'), "
        "or run 'stdbp download fashion-mnist --out DIR' and pass --data-dir DIR",
    ),
}


def _open_bytes(path: Path) -> bytes:
    """The decompressed content of ``path`` (gzip detected by its magic bytes)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"missing data file {path}") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from None
    if raw[:2] == b"\x1f\x8b":
        return _gunzip(raw, path)
    return raw


#: A gzip file may expand to at most this many times its size, or 64 MiB if that is more: the
#: MNIST and Fashion-MNIST files expand 2-5 times (small files of blank images far more, hence
#: the floor); beyond is a crafted file meant to exhaust memory.
_MAX_GZIP_RATIO = 20
_MIN_GZIP_LIMIT = 64 * 2**20


def _gunzip(raw: bytes, path: Path) -> bytes:
    """``raw`` decompressed (every gzip member, checksums checked), never past the expansion limit."""
    limit = max(_MAX_GZIP_RATIO * len(raw), _MIN_GZIP_LIMIT)
    parts: list[bytes] = []
    size = 0
    rest = raw
    try:
        while rest:
            member = zlib.decompressobj(wbits=31)
            parts.append(member.decompress(rest, limit + 1 - size))
            size += len(parts[-1])
            if size > limit or member.unconsumed_tail:
                raise DataError(
                    f"{path} expands to more than {limit} bytes ({_MAX_GZIP_RATIO} times its size); refused"
                )
            if not member.eof:
                raise DataError(f"{path} is a corrupt or truncated gzip file (it ends early); download it again")
            rest = member.unused_data.lstrip(b"\x00")  # zero padding after a member is allowed, as gzip allows it
            if rest and rest[:2] != b"\x1f\x8b":
                raise DataError(f"{path} is a corrupt gzip file (bytes after its end); download it again")
    except zlib.error as exc:
        raise DataError(f"{path} is a corrupt or truncated gzip file ({exc}); download it again") from None
    return b"".join(parts)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzip or raw) into an array, checking its magic number and size.

    Raises:
        DataError: if the file is missing, corrupt, has a wrong magic number, or its length does
            not match the dimensions in its header.
    """
    path = Path(path)
    data = _open_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES or data[3] == 0:
        raise DataError(f"{path} is not an IDX file (wrong magic number {data[:4].hex() or 'empty'}); check the path")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path} is truncated: its header is incomplete; download it again")
    dims = tuple(int.from_bytes(data[4 + 4 * k : 8 + 4 * k], "big") for k in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = header + math.prod(dims) * dtype.itemsize
    if len(data) != expected:
        raise DataError(
            f"{path} is truncated or padded: {len(data)} bytes where its header {dims} needs {expected}; download it again"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)


def _find(directory: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (directory / name).exists():
            return directory / name
    raise DataError(f"missing data file {directory / (stem + '.gz')} (or {stem}); check --data-dir")


@dataclass(frozen=True)
class Split:
    """One split of an image dataset, kept whole in memory: ``images`` ``(N, H, W)`` uint8, ``labels`` ``(N,)`` int64."""

    images: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def dataset_dir(dataset: str, data_dir: str | os.PathLike | None = None) -> Path:
    """The directory to read ``dataset`` from: ``data_dir`` if given, else the dataset's home."""
    if data_dir is not None:
        path = Path(data_dir)
        if not path.is_dir():
            raise DataError(f"--data-dir {path} is not a directory; give a directory with the four IDX files")
        return path
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)} or give --data-dir")
    info = DATASETS[dataset]
    if not info.default_dir.is_dir():
        raise DataError(f"{dataset} not found at {info.default_dir}: {info.hint}")
    return info.default_dir


def verify_checksums(directory: Path) -> None:
    """Check the files listed in ``directory/SHA256SUMS`` (of the files as stored), if that file exists."""
    sums = directory / "SHA256SUMS"
    if not sums.exists():
        return
    try:
        lines = sums.read_text().splitlines()
        for line in lines:
            if not line.strip():
                continue
            digest, name = line.split()[0], line.split()[-1].lstrip("*")
            path = directory / name
            if path.parent != directory:
                raise DataError(f"{sums} names {name!r}, outside its directory")
            if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() != digest:
                raise DataError(f"{path} does not match its checksum in {sums}; the file is corrupt, replace it")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {sums}: {exc}") from None


def load_split(directory: Path, split: str) -> Split:
    """Load ``split`` (``"train"`` or ``"test"``) from an IDX directory, checking counts and shapes."""
    images_stem, labels_stem = FILES[split]
    images = read_idx(_find(directory, images_stem))
    labels = read_idx(_find(directory, labels_stem))
    if images.ndim != 3 or labels.ndim != 1:
        raise DataError(f"{directory}: expected 3-d images and 1-d labels, got {images.shape} and {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{directory}: {split} split has {images.shape[0]} images but {labels.shape[0]} labels; the files do not belong together"
        )
    if images.dtype != np.uint8:
        raise DataError(
            f"{directory}: {split} images are {images.dtype}; IDX images must be unsigned bytes (type 0x08)"
        )
    if labels.dtype.kind not in "iu" or (labels.size and (int(labels.min()) < 0 or int(labels.max()) >= 2**16)):
        raise DataError(f"{directory}: {split} labels must be class indices from 0 to 65535")
    return Split(torch.from_numpy(images.astype(np.uint8)), torch.from_numpy(labels.astype(np.int64)))


def load_dataset(
    dataset: str = "mnist", data_dir: str | os.PathLike | None = None, splits=("train", "test")
) -> dict[str, Split]:
    """Load the named splits of a dataset; see :func:`dataset_dir` for where it is read from."""
    directory = dataset_dir(dataset, data_dir)
    verify_checksums(directory)
    return {split: load_split(directory, split) for split in splits}


def download(dataset: str, out_dir: str | os.PathLike) -> Path:
    """Download the four IDX files of ``dataset`` into ``out_dir``, verifying each checksum.

    A file that fails its checksum is not kept; files already present and valid are skipped.
    """
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    info = DATASETS[dataset]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stem, digest in info.sha256.items():
        target = out / (stem + ".gz")
        if target.exists() and hashlib.sha256(_open_bytes(target)).hexdigest() == digest:
            continue
        errors = []
        for base in info.urls:
            try:
                with urllib.request.urlopen(base + stem + ".gz", timeout=60) as response:
                    payload = response.read()
            except OSError as exc:
                errors.append(f"{base}: {exc}")
                continue
            try:
                content = gzip.decompress(payload)
            except (OSError, EOFError, zlib.error):
                errors.append(f"{base}: not a valid gzip file")
                continue
            if hashlib.sha256(content).hexdigest() != digest:
                errors.append(f"{base}: checksum mismatch")
                continue
            with tempfile.NamedTemporaryFile(dir=out, delete=False) as tmp:
                tmp.write(payload)
            os.replace(tmp.name, target)
            log.info("downloaded %s", target)
            break
        else:
            raise DataError(f"could not download {stem}.gz: {'; '.join(errors)}")
    return out
