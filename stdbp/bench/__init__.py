"""``stdbp bench``: the training step timed against a same-shape ReLU network and snnTorch."""

from .step_timing import DEFAULT_ARCHS, run_bench

__all__ = ["DEFAULT_ARCHS", "run_bench"]
