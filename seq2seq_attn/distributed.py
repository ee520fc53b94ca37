"""Training in several processes launched by ``torchrun``: the process group from torchrun's
environment, the few collectives training needs, failing together, and the DDP wrapper.

In one process (no torchrun environment) :class:`World` is a single-process stand-in: every
collective returns its input, and :meth:`World.replicate` returns no wrapper, so the training
loop runs one code path whatever the number of processes.

Work that one process does for the others (rank 0 trains the tokenizer, validates) is plain code
inside :meth:`World.together`, followed by a :meth:`World.broadcast` of its result: an exception
inside the block reaches every process instead of leaving the others waiting.
"""

from __future__ import annotations

import logging
import os
import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
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
CACHE_TURNS = 3  # rank 0, then the first process of every other machine, then the rest


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

    @property
    def cache_turn(self) -> int:
        """This process's turn (of :data:`CACHE_TURNS`) to build or read a shared cache: 0 for
        rank 0, 1 for the first process of every other machine, 2 for the rest; so that what
        rank 0 writes is read, not rebuilt, by the others, and a machine that cannot see rank
        0's files builds its own once."""
        return 0 if self.is_main else 1 if self.local_rank == 0 else 2

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
        try:
            dist.init_process_group(
                backend, timeout=timedelta(minutes=timeout_minutes),
                device_id=device if backend == "nccl" else None,
            )  # fmt: skip
        except (RuntimeError, ValueError) as error:  # a peer gone before it connected
            detail = " ".join(str(error).split())
            raise DistributedError(
                f"rank {rank} on {world.host} could not join the other processes ({detail}); "
                "torchrun --max-restarts starts them again, or start the job again"
            ) from None
        world.backend, world.distributed = backend, True
        return world, device

    def describe(self, hosts: list[str]) -> str:
        """The processes and their machines (``hosts``: every process's :attr:`host`, gathered),
        e.g. ``2 processes (gloo) on vm x2``."""
        if not self.distributed:
            return "1 process"
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
        self.raise_failures(self.gather(error), error)

    @staticmethod
    def raise_failures(errors: list[str | None], error: str | None) -> None:
        """Raise when any of ``errors`` (every process's, gathered in rank order) is set: this
        process's own ``error`` as it is, else the first failed rank's, named."""
        failed = [(rank, message) for rank, message in enumerate(errors) if message]
        if not failed:
            return
        if error is not None:
            raise DistributedError(error)
        rank, message = failed[0]
        raise DistributedError(f"rank {rank} failed: {message}")

    @contextmanager
    def together(self) -> Iterator[None]:
        """A block that every process enters, each doing its part (or nothing), and after which
        all agree whether one failed: an exception inside is raised on its process and reaches
        the others as a :class:`DistributedError` naming its rank."""
        try:
            yield
        except Exception as exc:
            if self.distributed:  # tell the others, then fail with the original error
                self.gather(f"{type(exc).__name__}: {exc}")
            raise
        self.check(None)

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
