"""Training: the data, augmentation, one training step without autograd, and the loop."""

from .data import Split, load_dataset
from .config import TrainConfig
from .loop import evaluate, train
from .step import loss_and_backward

__all__ = ["Split", "TrainConfig", "evaluate", "load_dataset", "loss_and_backward", "train"]
