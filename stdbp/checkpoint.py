"""Checkpoints that rebuild their network without code, written atomically.

Model files are data: they are read with ``torch.load(weights_only=True)``, which builds only
tensors, numbers, strings and containers (and the few PyTorch types a training state holds);
a file that names any other object is refused before anything in it runs.

A checkpoint is a ``torch.save`` dictionary with ``format_version``, ``model`` (the arguments of
:func:`stdbp.build`) and ``state_dict``; training checkpoints add the optimizer, scheduler,
progress and random-generator states.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError
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


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load and check a checkpoint dictionary; raise :class:`CheckpointError` with a fix on failure."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; give the path of a .pt file written by 'stdbp train'")
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
    except (zipfile.BadZipFile, EOFError, RuntimeError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path} is not a readable stdbp checkpoint ({type(exc).__name__}); it may be truncated or corrupt"
        ) from None
    if not isinstance(payload, dict) or "format_version" not in payload or "model" not in payload:
        raise CheckpointError(f"{path} is not a stdbp checkpoint (no format_version/model entries)")
    if payload["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {payload['format_version']}, this stdbp reads format {FORMAT_VERSION}; "
            "use the stdbp version that wrote it"
        )
    return payload


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
    model = build(**config)
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
