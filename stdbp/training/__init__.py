"""Training: the data, augmentation, one training step without autograd, and the loop."""

from .config import TrainConfig
from .data import Split, load_dataset
from .loop import evaluate, train
from .step import loss_and_backward

__all__ = ["Split", "TrainConfig", "evaluate", "load_dataset", "loss_and_backward", "train"]
