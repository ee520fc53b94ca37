"""Training in several processes launched by ``torchrun``: the process group from torchrun's
environment, rank-0 decisions, the few collectives the loop needs, and the DDP wrapper.

In one process (no torchrun environment) :class:`World` is a single-process stand-in: every
collective returns its input, and :meth:`World.replicate` returns no wrapper, so the training
loop runs one code path whatever the number of processes.
"""

from __future__ import annotations

import logging
import os
import socket
import warnings
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .config import require

logger = logging.getLogger(__name__)

T = TypeVar("T")

TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class DistributedError(RuntimeError):
    """Another process of a distributed run failed, or the processes disagree (the message says
    which rank, on which host, and what to do)."""


def launched_by_torchrun() -> bool:
    """Whether this process was started by ``torchrun`` (its environment variables are set)."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def environment_rank() -> int:
    """This process's global rank as torchrun set it (0 without torchrun); readable before any
    process group exists, e.g. to decide which process draws progress."""
    return int(os.environ.get("RANK", "0")) if launched_by_torchrun() else 0


def resolve_backend(backend: str, device: torch.device) -> str:
    """``auto`` -> NCCL on CUDA, gloo on CPU; ``nccl`` on a CPU device is refused."""
    if backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    require(
        backend != "nccl" or device.type == "cuda", "train.ddp_backend", backend,
        "NCCL needs CUDA devices but training runs on the CPU; use 'gloo' or 'auto'",
    )  # fmt: skip
    return backend


class World:
    """The processes training one model together (one process without torchrun)."""

    def __init__(self, rank: int = 0, local_rank: int = 0, world_size: int = 1) -> None:
        self.rank, self.local_rank, self.world_size = rank, local_rank, world_size
        self.host = socket.gethostname()
        self.device = torch.device("cpu")  # where collective tensors live (CUDA for NCCL)
        self.backend = "none"
        self.distributed = False  # whether this world's process group is up (torchrun)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files, validates and draws progress."""
        return self.rank == 0

    @classmethod
    def from_environment(
        cls, backend: str, device: torch.device, timeout_minutes: float
    ) -> tuple[World, torch.device]:
        """Join torchrun's process group when launched by it; returns the world and this
        process's training device (``cuda:LOCAL_RANK`` on CUDA). Without torchrun: one process
        and ``device`` unchanged."""
        if not launched_by_torchrun():
            return cls(), device
        rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
        world = cls(rank, local_rank, int(os.environ["WORLD_SIZE"]))
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        backend = resolve_backend(backend, device)
        world.device = device if backend == "nccl" else torch.device("cpu")
        dist.init_process_group(
            backend, timeout=timedelta(minutes=timeout_minutes),
            device_id=device if backend == "nccl" else None,
        )  # fmt: skip
        world.backend, world.distributed = backend, True
        return world, device

    def describe(self) -> str:
        """The processes and their machines, e.g. ``2 processes (gloo) on vm x2`` (collective:
        every process must call it)."""
        if not self.distributed:
            return "1 process"
        hosts = self.gather(self.host)
        machines = ", ".join(f"{host} x{hosts.count(host)}" for host in dict.fromkeys(hosts))
        return f"{self.world_size} processes ({self.backend}) on {machines}"

    def close(self, finished: bool) -> None:
        """Leave the process group (nothing in one process). After a ``finished`` run every
        process first waits for the others, so that none tears its connections down while
        another still uses them; after an error it leaves at once (the others may be gone)."""
        if self.distributed:
            if finished:
                dist.barrier()
            dist.destroy_process_group()
            self.distributed = False

    # ---- collectives (identity in one process) -----------------------------------------------

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """The elementwise sum of ``values`` over all processes (a new tensor on its device)."""
        if not self.distributed:
            return values
        reduced = values.to(self.device, copy=True)
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
        return reduced.to(values.device)

    def all_reduce_min(self, value: int) -> int:
        """The smallest of the processes' ``value``."""
        if not self.distributed:
            return value
        reduced = torch.tensor([value], dtype=torch.long, device=self.device)
        dist.all_reduce(reduced, op=dist.ReduceOp.MIN)
        return int(reduced.item())

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` (any picklable object) on every process."""
        if not self.distributed:
            return value
        holder = [value if self.is_main else None]
        dist.broadcast_object_list(holder, src=0, device=self.device)
        return holder[0]

    def gather(self, value: T) -> list[T]:
        """Every process's ``value``, in rank order, on every process."""
        if not self.distributed:
            return [value]
        gathered: list = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def check(self, error: str | None) -> None:
        """Raise on every process when any process reports an ``error`` (all stop together
        instead of waiting for a process that has failed)."""
        errors = [(rank, message) for rank, message in enumerate(self.gather(error)) if message]
        if not errors:
            return
        if error is not None:
            raise DistributedError(error)
        rank, message = errors[0]
        raise DistributedError(f"rank {rank} failed: {message}")

    def in_turn(self, work: Callable[[], T]) -> T:
        """Run ``work`` on rank 0 first, then on the first process of every other machine, then
        on the rest; so that what rank 0 writes (a data cache) is read, not rebuilt, by the
        others, and a machine that cannot see rank 0's files builds its own once. An exception
        on any process stops all of them."""
        stage = 0 if self.is_main else 1 if self.local_rank == 0 else 2
        return self._turns(work, stage, turns=3)  # type: ignore[return-value]

    def main_only(self, work: Callable[[], T]) -> T | None:
        """``work()`` on rank 0 (None elsewhere); an exception there stops every process."""
        return self._turns(work, 0 if self.is_main else 1, turns=1)

    def _turns(self, work: Callable[[], T], stage: int, turns: int) -> T | None:
        """Run ``work`` in turn ``stage`` of ``turns`` (never when ``stage`` >= ``turns``), all
        processes agreeing after each turn whether one failed."""
        result: T | None = None
        for turn in range(turns if self.distributed else 1):
            error = None
            if turn == stage:
                try:
                    result = work()
                except Exception as exc:
                    if not self.distributed:
                        raise
                    error = f"{type(exc).__name__}: {exc}"
                    self.gather(error)  # tell the others, then fail with the original error
                    raise
            self.check(error)
        return result

    def on_main(self, work: Callable[[], T]) -> T:
        """Run ``work`` on rank 0 only and hand its (picklable) result to every process; an
        exception on rank 0 stops all of them."""
        if not self.distributed:
            return work()
        result, error = None, None
        if self.is_main:
            try:
                result = work()
            except Exception as exc:
                self.broadcast((None, f"{type(exc).__name__}: {exc}"))
                raise
        result, error = self.broadcast((result, error))
        if error is not None:
            raise DistributedError(f"rank 0 failed: {error}")
        return result  # type: ignore[return-value]

    # ---- the model ---------------------------------------------------------------------------

    def replicate(self, model: nn.Module) -> DistributedDataParallel | None:
        """``model`` wrapped for data-parallel training, or None in one process.

        Rank 0's parameters are copied to every process here. Buffers are not broadcast on each
        forward (the models' buffers are constants such as positional tables)."""
        if not self.distributed:
            return None
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        with warnings.catch_warnings():  # newer torch renames the option; its meaning is kept
            warnings.filterwarnings("ignore", "`broadcast_buffers` is deprecated")
            return DistributedDataParallel(
                model, device_ids=device_ids, broadcast_buffers=False, gradient_as_bucket_view=True
            )
