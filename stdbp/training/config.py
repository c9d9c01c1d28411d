"""The configuration of a training run: every option of ``stdbp train``, checked."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ..errors import StdbpError

__all__ = ["TrainConfig"]


@dataclass
class TrainConfig:
    """Everything that defines a training run; written to ``config.json`` in the run directory."""

    arch: str = "784-800-10"
    dataset: str = "mnist"
    data_dir: str | None = None
    epochs: int = 3
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0  # decoupled weight decay (AdamW) per unit learning rate; 0 = plain Adam
    weight_sum_penalty: float = 0.0  # K of K * sum_j max(0, threshold - sum_i w_ij) added to the loss
    schedule: str = "cosine"  # or "constant"
    tau: float = 0.05  # softmax time scale of the loss
    threshold: float = 1.0
    t_max: float = 1.0  # latency-coding window
    jitter: float = 0.02  # std of Gaussian noise on input spike times (time units)
    shift: int = 1  # random image shifts of up to this many pixels
    rotate: float = 0.0  # random rotations of up to this many degrees
    scale: float = 0.0  # random scaling by a factor in [1 - scale, 1 + scale]
    elastic: float = 0.0  # strength (alpha, pixels) of random elastic distortions; 0 = none
    elastic_sigma: float = 6.0  # smoothness (Gaussian sigma, pixels) of the elastic distortions
    hflip: float = 0.0  # probability of mirroring an image left to right
    erase: float = 0.0  # probability of erasing a random rectangle of an image (random erasing)
    seed: int = 0
    train_limit: int | None = None  # train on the first N images only (quick runs)
    eval_batch_size: int = 1000
    checkpoint_every: int = 200  # steps between periodic checkpoints
    skip_grad_norm: float | None = None  # skip (do not apply) a step whose gradient norm exceeds this

    def validate(self) -> None:
        """Raise :class:`StdbpError` for a value of the wrong type or out of range (flags,
        ``--config`` files and saved configurations alike)."""
        for field in dataclasses.fields(self):
            value, kinds = getattr(self, field.name), _FIELD_TYPES[field.name]
            flag = "--" + field.name.replace("_", "-")
            if not isinstance(value, kinds) or isinstance(value, bool):
                raise StdbpError(f"{flag} must be {_KIND_NAMES[kinds]}, got {value!r}")
            if isinstance(value, float) and not math.isfinite(value):
                raise StdbpError(f"{flag} must be a finite number, got {value}")
        checks = [
            (self.epochs >= 1, "--epochs must be at least 1"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.lr > 0, "--lr must be a positive number"),
            (
                self.weight_decay >= 0 and self.weight_decay * self.lr < 1,
                "--weight-decay must be at least 0 and below 1 / --lr",
            ),
            (0 <= self.weight_sum_penalty <= 1e6, "--weight-sum-penalty must be between 0 and 1e6"),
            (1e-6 <= self.t_max <= 1e6, "--t-max must be between 1e-06 and 1e+06 time units"),
            (1e-6 <= self.threshold <= 1e6, "--threshold must be between 1e-06 and 1e+06"),
            (
                1e-6 * self.t_max <= self.tau <= 100 * self.t_max,
                "--tau must be between 1e-06 and 100 times --t-max (a longer softmax time scale makes every "
                "output equally likely: the loss is flat and nothing trains)",
            ),
            (0 <= self.jitter <= 10 * self.t_max, "--jitter must be between 0 and 10 times --t-max"),
            (0 <= self.shift <= 1000, "--shift must be between 0 and 1000 pixels"),
            (0 <= self.rotate <= 180, "--rotate must be between 0 and 180 degrees"),
            (0 <= self.scale < 1, "--scale must be in [0, 1)"),
            (0 <= self.elastic <= 1000, "--elastic must be between 0 and 1000 pixels"),
            (0.1 <= self.elastic_sigma <= 100, "--elastic-sigma must be between 0.1 and 100 pixels"),
            (0 <= self.hflip <= 1, "--hflip must be a probability between 0 and 1"),
            (0 <= self.erase <= 1, "--erase must be a probability between 0 and 1"),
            (0 <= self.seed < 2**32, "--seed must be between 0 and 2**32 - 1"),
            (self.train_limit is None or self.train_limit >= 1, "--train-limit must be at least 1"),
            (self.eval_batch_size >= 1, "--eval-batch-size must be at least 1"),
            (self.checkpoint_every >= 1, "--checkpoint-every must be at least 1"),
            (self.skip_grad_norm is None or self.skip_grad_norm > 0, "--skip-grad-norm must be a positive number"),
            (self.schedule in ("cosine", "constant"), "--schedule must be 'cosine' or 'constant'"),
        ]
        for ok, message in checks:
            if not ok:
                raise StdbpError(message)


#: The type each field of :class:`TrainConfig` must have (a float field takes an int too).
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "arch": (str,),
    "dataset": (str,),
    "data_dir": (str, type(None)),
    "epochs": (int,),
    "batch_size": (int,),
    "lr": (int, float),
    "weight_decay": (int, float),
    "weight_sum_penalty": (int, float),
    "schedule": (str,),
    "tau": (int, float),
    "threshold": (int, float),
    "t_max": (int, float),
    "jitter": (int, float),
    "shift": (int,),
    "rotate": (int, float),
    "scale": (int, float),
    "elastic": (int, float),
    "elastic_sigma": (int, float),
    "hflip": (int, float),
    "erase": (int, float),
    "seed": (int,),
    "train_limit": (int, type(None)),
    "eval_batch_size": (int,),
    "checkpoint_every": (int,),
    "skip_grad_norm": (int, float, type(None)),
}
_KIND_NAMES = {
    (str,): "a string",
    (str, type(None)): "a string",
    (int,): "an integer",
    (int, type(None)): "an integer",
    (int, float): "a number",
    (int, float, type(None)): "a number",
}
