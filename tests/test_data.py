"""IDX reading, dataset checks, checksums and the download path (without a network)."""

from __future__ import annotations

import gzip
import hashlib
import io
import shutil
from pathlib import Path

import numpy as np
import pytest

from stdbp.errors import DataError
from stdbp.training import data

MNIST = data.DATASETS["mnist"].default_dir


def _idx(array: np.ndarray, code: int = 0x08) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_split(directory: Path, n_images: int, n_labels: int, split: str = "train") -> None:
    images, labels = data.FILES[split]
    (directory / (images + ".gz")).write_bytes(gzip.compress(_idx(np.zeros((n_images, 28, 28)))))
    (directory / (labels + ".gz")).write_bytes(gzip.compress(_idx(np.arange(n_labels) % 10)))


def test_embedded_mnist_is_complete_and_verified() -> None:
    splits = data.load_dataset("mnist")
    train, test = splits["train"], splits["test"]
    assert train.images.shape == (60000, 28, 28) and test.images.shape == (10000, 28, 28)
    assert np.bincount(train.labels.numpy()).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(test.labels.numpy()).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    raw = gzip.decompress((MNIST / "train-images-idx3-ubyte.gz").read_bytes())
    assert hashlib.sha256(raw).hexdigest() == data.DATASETS["mnist"].sha256["train-images-idx3-ubyte"]


def test_raw_and_gzip_read_the_same(tmp_path: Path) -> None:
    raw = tmp_path / "t10k-labels-idx1-ubyte"
    raw.write_bytes(gzip.decompress((MNIST / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    assert np.array_equal(data.read_idx(raw), data.read_idx(MNIST / "t10k-labels-idx1-ubyte.gz"))


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x00\x00\x08", "wrong magic"),
        (b"\x12\x34\x08\x01\x00\x00\x00\x02\x00\x00", "wrong magic"),
        (_idx(np.zeros(5))[:-2], "truncated"),
        (gzip.compress(_idx(np.zeros(5)))[:-6], "corrupt or truncated gzip"),
        (b"\x1f\x8b" + b"garbage" * 10, "corrupt or truncated gzip"),
    ],
)
def test_bad_idx_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "file.idx"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        data.read_idx(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing data file"):
        data.read_idx(tmp_path / "nothing.gz")
    with pytest.raises(DataError, match="missing data file"):
        data.load_dataset("mnist", tmp_path)


def test_data_dir_must_exist(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a directory"):
        data.load_dataset("mnist", tmp_path / "absent")


def test_count_mismatch(tmp_path: Path) -> None:
    _write_split(tmp_path, n_images=10, n_labels=9)
    with pytest.raises(DataError, match="10 images but 9 labels"):
        data.load_dataset("mnist", tmp_path, splits=("train",))


def test_any_idx_directory_loads(tmp_path: Path) -> None:
    _write_split(tmp_path, 12, 12, "train")
    _write_split(tmp_path, 5, 5, "test")
    splits = data.load_dataset("whatever", tmp_path)
    assert len(splits["train"]) == 12 and len(splits["test"]) == 5


def test_checksum_mismatch_is_reported(tmp_path: Path) -> None:
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "SHA256SUMS"):
        shutil.copy(MNIST / name, tmp_path / name)
    data.load_dataset("mnist", tmp_path, splits=("test",))
    blob = bytearray((tmp_path / "t10k-labels-idx1-ubyte.gz").read_bytes())
    blob[-10] ^= 0xFF
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(bytes(blob))
    with pytest.raises(DataError, match="checksum"):
        data.load_dataset("mnist", tmp_path, splits=("test",))


def test_unknown_dataset() -> None:
    with pytest.raises(DataError, match="unknown dataset"):
        data.load_dataset("cifar-1000")


def test_download_verifies_checksums(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    served: dict[str, bytes] = {}

    def fake_urlopen(url: str, timeout: float = 0):
        name = url.rsplit("/", 1)[-1]
        if name not in served:
            raise OSError("no such file")
        return io.BytesIO(served[name])

    monkeypatch.setattr(data.urllib.request, "urlopen", fake_urlopen)
    for stem in data.DATASETS["mnist"].sha256:
        served[stem + ".gz"] = (MNIST / (stem + ".gz")).read_bytes()
    served["t10k-labels-idx1-ubyte.gz"] = gzip.compress(b"tampered")
    with pytest.raises(DataError, match="checksum mismatch"):
        data.download("mnist", tmp_path)
    assert not (tmp_path / "t10k-labels-idx1-ubyte.gz").exists()  # a bad file is never kept
    served["t10k-labels-idx1-ubyte.gz"] = (MNIST / "t10k-labels-idx1-ubyte.gz").read_bytes()
    data.download("mnist", tmp_path)
    assert len(data.load_dataset("mnist", tmp_path)["test"]) == 10000
