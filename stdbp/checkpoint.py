"""Checkpoints that rebuild their network without code, written atomically.

Model files are data: they are read with ``torch.load(weights_only=True)``, which builds only
tensors, numbers, strings and containers (and the few PyTorch types a training state holds);
a file that names any other object is refused before anything in it runs.

A checkpoint is a ``torch.save`` dictionary with ``format_version``, ``model`` (the arguments of
:func:`stdbp.build`) and ``state_dict``; training checkpoints add the optimizer, scheduler,
progress and random-generator states.
"""

from __future__ import annotations

import math
import os
import pickle
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError
from .kernels import BACKENDS
from .nn.network import SpikingNetwork, build

FORMAT_VERSION = 1

__all__ = [
    "FORMAT_VERSION",
    "atomic_write_bytes",
    "atomic_write_text",
    "default_pretrained_dir",
    "load_checkpoint",
    "load_model",
    "pretrained_checkpoint",
    "save_checkpoint",
]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def save_checkpoint(path: str | os.PathLike, model: SpikingNetwork, **extra: Any) -> None:
    """Save ``model`` (and any training state in ``extra``) atomically to ``path``."""
    import io

    payload = {"format_version": FORMAT_VERSION, "model": model.config, "state_dict": model.state_dict(), **extra}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


#: The arguments of :func:`stdbp.build` a model file may carry, and the types each may have.
_MODEL_KEYS: dict[str, tuple[type, ...]] = {
    "arch": (str,),
    "threshold": (int, float),
    "backend": (str, type(None)),
    "neuron": (str,),
    "psp_tau": (int, float),
}
#: An archive's entries may add up to at most this multiple of the file's size (they are stored
#: uncompressed by ``torch.save``): more means a crafted file meant to exhaust memory.
_MAX_EXPANSION = 4


def _check_archive(path: Path) -> None:
    """Refuse a file that is not a sound zip archive (``torch.save``'s format) before unpickling:
    every entry's CRC-32 must match (a flipped byte anywhere is caught), and the entries must not
    declare more data than the file can hold."""
    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(info.file_size for info in archive.infolist())
            if declared > _MAX_EXPANSION * path.stat().st_size + 2**20:
                raise CheckpointError(
                    f"{path} declares {declared} bytes of content in a {path.stat().st_size}-byte file; refused"
                )
            bad = archive.testzip()
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        EOFError,
        OSError,
        ValueError,
        NotImplementedError,
        RuntimeError,
    ) as exc:
        raise CheckpointError(
            f"{path} is not a readable stdbp checkpoint ({type(exc).__name__}); it may be truncated or corrupt"
        ) from None
    if bad is not None:
        raise CheckpointError(f"{path} is corrupt: its entry {bad} fails its checksum; copy or download it again")


def _check_payload(path: Path, payload: Any) -> dict[str, Any]:
    """The checks every model file passes: the format, the model's arguments, finite floating-point weights."""
    if not isinstance(payload, dict) or "format_version" not in payload or "model" not in payload:
        raise CheckpointError(f"{path} is not a stdbp checkpoint (no format_version/model entries)")
    if payload["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {payload['format_version']!r}, this stdbp reads format {FORMAT_VERSION}; "
            "use the stdbp version that wrote it"
        )
    model = payload["model"]
    if not isinstance(model, dict) or not isinstance(model.get("arch"), str):
        raise CheckpointError(f"{path}: its model entry has no architecture string")
    for key, value in model.items():
        if key not in _MODEL_KEYS or not isinstance(value, _MODEL_KEYS[key]) or isinstance(value, bool):
            raise CheckpointError(f"{path}: its model entry has a bad {key!r} ({type(value).__name__})")
        if isinstance(value, (int, float)) and not (math.isfinite(value) and value > 0):
            raise CheckpointError(f"{path}: its model entry's {key!r} is {value}, not a positive number")
    if model.get("backend") not in (None, *BACKENDS):
        raise CheckpointError(f"{path}: its model entry names an unknown kernel backend {model['backend']!r}")
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError(f"{path} has no state_dict of named tensors; it is not a stdbp model file")
    for name, tensor in state.items():
        if tensor.dtype not in (torch.float32, torch.float64):
            raise CheckpointError(f"{path}: weights {name!r} are {tensor.dtype}, not float32 or float64")
        if not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{path}: weights {name!r} contain NaN or infinite values; refused")
    return payload


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load and check a checkpoint dictionary; raise :class:`CheckpointError` with a fix on failure.

    The file must be a sound archive (checksums, sizes), hold plain data only (no object that
    could run code), and carry the format version, the model's arguments and finite
    floating-point weights.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; give the path of a .pt file written by 'stdbp train'")
    _check_archive(path)
    try:
        # weights_only: tensors, numbers, strings and containers only; any other object is refused
        # before it is built, so nothing in the file runs
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f"it names {found.group(1)}" if found else "it holds objects other than tensors, numbers and containers"
        raise CheckpointError(
            f"{path} is not plain data ({what}); refused, nothing in it was run. "
            "A stdbp model file holds only tensors, numbers, strings, lists and dicts"
        ) from None
    except (zipfile.BadZipFile, EOFError, RuntimeError, OSError, ValueError, MemoryError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"{path} is not a readable stdbp checkpoint ({type(exc).__name__}); it may be truncated or corrupt"
        ) from None
    return _check_payload(path, payload)


def load_model(path: str | os.PathLike, arch: str | None = None) -> SpikingNetwork:
    """Rebuild the network stored in a checkpoint.

    Args:
        path: checkpoint file.
        arch: if given, the architecture the caller expects; a mismatch is an error.
    """
    payload = load_checkpoint(path)
    config = payload["model"]
    if arch is not None and config.get("arch") != arch:
        raise CheckpointError(
            f"{path} holds architecture {config.get('arch')!r}, not {arch!r}; pass a matching --arch or checkpoint"
        )
    try:
        model = build(**config)
    except (ValueError, TypeError) as exc:  # ArchitectureError is a ValueError
        raise CheckpointError(f"{path}: {exc}") from None
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{path}: weights do not fit architecture {config.get('arch')!r} ({first})") from None
    return model


def default_pretrained_dir() -> Path | None:
    """``./pretrained`` (the repository's shipped networks, when run from a checkout) if it is a
    directory, else ``None``; commands that use shipped networks take ``--pretrained DIR``."""
    candidate = Path("pretrained")
    return candidate if candidate.is_dir() else None


def pretrained_checkpoint(directory: str | os.PathLike | None, arch: str, dataset: str = "mnist") -> Path | None:
    """``directory/DATASET-ARCH.pt`` if it is a file, else ``None``."""
    path = None if directory is None else Path(directory) / f"{dataset}-{arch}.pt"
    return path if path is not None and path.is_file() else None
