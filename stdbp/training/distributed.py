"""Data-parallel training on ``torch.distributed``: which process does what, and the reductions.

Under ``torchrun`` (the environment has ``WORLD_SIZE`` > 1), every process (rank) builds the
same network from the same seed, walks the same global batches in the same order, and takes a
contiguous share of each: rank ``r`` of ``W`` takes rows ``[n r / W, n (r + 1) / W)`` of a
batch of ``n``. Augmentation draws are made for the whole global batch on every rank (the
generator advances the same everywhere) and each rank applies its rows, so every draw is a
function of (seed, step, position in the batch) and a run sees the same images on any number
of processes. After each rank's forward and backward pass, one all-reduce sums the gradients
(each scaled by its share of the batch, so that the sum is the global batch's mean gradient),
the loss and accuracy sums and the stop flag, in one flat buffer. Every rank then holds the
same gradients and so takes the same decision on non-finite steps.

Backend: gloo for CPU tensors, NCCL for CUDA. Without ``torchrun`` none of this runs:
:data:`SINGLE` is the one-process context, and training takes exactly the path it always did.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from ..errors import StdbpError

__all__ = ["SINGLE", "Context", "dist_backend", "init_from_environment", "numba_threads", "share", "thread_count"]

#: How long a collective waits for the other ranks before it fails (a rank that died).
TIMEOUT = datetime.timedelta(seconds=float(os.environ.get("STDBP_DIST_TIMEOUT", "300")))


@dataclass(frozen=True)
class Context:
    """Where this process stands: ``rank`` of ``world`` processes, ``local_world`` on this machine."""

    rank: int = 0
    world: int = 1
    local_world: int = 1

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def leader(self) -> bool:
        """Rank 0: the one that writes files, prints and shows progress."""
        return self.rank == 0

    def rows(self, n: int) -> tuple[int, int]:
        """This rank's rows ``[lo, hi)`` of a global batch of ``n`` (see :func:`share`)."""
        return share(n, self.rank, self.world)

    def all_reduce(self, buffer: Tensor) -> Tensor:
        """Sum ``buffer`` over the ranks, in place; a rank that does not answer is a clear error."""
        if self.distributed:
            try:
                dist.all_reduce(buffer)
            except (RuntimeError, dist.DistBackendError) as exc:  # a peer died or timed out
                raise StdbpError(
                    f"rank {self.rank}: lost the other processes ({str(exc).splitlines()[0][:160]}); "
                    "the last checkpoint is in the run directory, continue with --resume"
                ) from None
        return buffer

    def reduce_step(self, params: Iterable[torch.nn.Parameter], weight: float, sums: list[float]) -> list[float]:
        """One all-reduce per step: the gradients of ``params`` scaled by ``weight`` (this rank's
        share of the global batch) and ``sums`` (loss sum, correct, stop flag), summed over the
        ranks in one flat buffer of the gradients' dtype; each ``.grad`` is replaced by the sum.
        Returns the summed ``sums`` (counts up to 2**24 stay exact in float32)."""
        if not self.distributed:
            return sums
        grads = [p.grad for p in params if p.grad is not None]
        dtype = grads[0].dtype if grads else torch.float32
        flat = torch.cat([*(g.reshape(-1) * weight for g in grads), torch.tensor(sums, dtype=dtype)])
        self.all_reduce(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()
        return flat[offset:].tolist()

    def reduce_sums(self, sums: list[float]) -> list[float]:
        """``sums`` added over the ranks (float64)."""
        if not self.distributed:
            return sums
        return self.all_reduce(torch.tensor(sums, dtype=torch.float64)).tolist()

    def broadcast_text(self, text: str) -> str:
        """Rank 0's ``text`` on every rank (UTF-8 bytes in a tensor; no pickling)."""
        if not self.distributed:
            return text
        data = (
            torch.tensor(list(text.encode()), dtype=torch.uint8) if self.leader else torch.empty(0, dtype=torch.uint8)
        )
        size = torch.tensor([data.numel()], dtype=torch.int64)
        dist.broadcast(size, src=0)
        buffer = data if self.leader else torch.empty(int(size), dtype=torch.uint8)
        dist.broadcast(buffer, src=0)
        return bytes(buffer.tolist()).decode()

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


#: The context of a run without torchrun.
SINGLE = Context()


def share(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of rank ``rank`` in a batch of ``n`` split over ``world`` ranks:
    contiguous, in rank order, sizes differing by at most one."""
    return n * rank // world, n * (rank + 1) // world


def thread_count(local_world: int, cores: int | None = None) -> int:
    """Threads for each of ``local_world`` processes on a machine of ``cores`` cores: its share."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores // local_world)


def init_from_environment(device: torch.device | None = None) -> Context:
    """The context torchrun describes in the environment (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_WORLD_SIZE``), with the process group initialised (gloo on CPU, NCCL on CUDA) and
    each process's numba and PyTorch threads set to its share of the cores, unless
    ``NUMBA_NUM_THREADS`` / ``OMP_NUM_THREADS`` say otherwise; :data:`SINGLE` without torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    rank = int(os.environ.get("RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    device = device or torch.device("cpu")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend=backend, timeout=TIMEOUT)
        except (RuntimeError, ValueError) as exc:
            raise StdbpError(
                f"cannot join the {world} training processes ({backend}): {str(exc).splitlines()[0]}"
            ) from None
    threads = thread_count(local_world)
    if "NUMBA_NUM_THREADS" not in os.environ:
        import numba

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", threads)))
    return Context(rank=rank, world=world, local_world=local_world)


def dist_backend() -> str:
    """The process group's backend (``gloo``, ``nccl``), or ``"none"`` outside torchrun."""
    return str(dist.get_backend()) if dist.is_initialized() else "none"


def numba_threads() -> int:
    """The threads numba's parallel kernels use in this process."""
    import numba

    return int(numba.get_num_threads())
