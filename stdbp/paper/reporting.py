"""Helpers shared by the paper's reports: strict JSON and short number formats."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["fmt", "json_safe"]


def json_safe(value: Any) -> Any:
    """``value`` with NaN/inf floats replaced by ``None`` and numpy scalars by Python ones (strict JSON)."""
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def fmt(value: float | None, digits: str = ".4f") -> str:
    """``value`` in format ``digits``, or ``"n/a"`` for ``None``."""
    return "n/a" if value is None else format(value, digits)
