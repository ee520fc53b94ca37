"""Where and in what precision to compute: device and autocast resolution, and what the
machine is (CPU model, native bf16), for choices and for reports."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import ConfigError

logger = logging.getLogger(__name__)

CPUINFO = Path("/proc/cpuinfo")  # Linux; elsewhere absent, and the functions fall back


DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def resolve_device(name: str, option: str, visible_gpus: int | None = None) -> torch.device:
    """The device that ``name`` (``auto``, ``cpu``, ``cuda`` or ``cuda:N``) means here:
    ``auto`` -> CUDA when a GPU is visible, else the CPU.

    ``option`` is what the user typed it as (``train.device``, ``--device``): a
    :class:`ConfigError` names it. ``visible_gpus`` is how many CUDA GPUs the runtime that will
    use the device sees (default: torch's count).
    """
    kind, colon, index = name.partition(":")
    if kind not in ("auto", "cpu", "cuda") or (colon and (kind != "cuda" or not index.isdigit())):
        raise ConfigError(f"{option}: invalid value {name!r}; use {DEVICE_CHOICES}")
    gpus = torch.cuda.device_count() if visible_gpus is None else visible_gpus
    if kind == "auto":
        return torch.device("cuda" if gpus > 0 else "cpu")
    if kind == "cuda" and gpus == 0:
        raise ConfigError(f"{option}: invalid value {name!r}; no CUDA GPU is visible: use cpu")
    if kind == "cuda" and int(index or 0) >= gpus:
        raise ConfigError(
            f"{option}: invalid value {name!r}; {gpus} CUDA GPU(s) are visible here: use cpu, "
            f"auto or cuda:0 ... cuda:{gpus - 1}"
        )
    return torch.device(name)


def _cpuinfo_field(name: str) -> str | None:
    """The first ``name : value`` of the Linux ``/proc/cpuinfo``, or None where there is none."""
    with contextlib.suppress(OSError):
        text = CPUINFO.read_text(encoding="utf-8", errors="replace")
        for line in text.splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() == name:
                return value.strip()
    return None


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AMX or AVX-512 BF16), where autocast pays off.

    Read from the ``/proc/cpuinfo`` flags (torch reports only the AVX level); False where that
    file does not exist.
    """
    flags = set((_cpuinfo_field("flags") or "").split())
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what the platform module knows."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def machine_info() -> dict:
    """What a figure was measured on: CPU model, cores, torch threads, native bf16, GPU, torch
    and Python versions, the platform."""
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_native_bf16": cpu_has_fast_bf16(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def keep_freed_memory() -> bool:
    """Have this process's C allocator keep the memory it frees for the next allocations,
    instead of handing it back to the kernel (glibc on Linux; elsewhere nothing is done).

    glibc serves blocks over 32 MiB with fresh ``mmap`` pages and returns freed heap tops, so a
    CPU training step, which allocates and frees the same large tensors every step (the logits
    and their gradient: 65 MB each for 4,096 target tokens of an 8,000-type vocabulary), paid a
    page fault for every 4 KiB it wrote again: about 14% of the output layer and loss of an RNN
    step. With ``mmap`` off for allocations and the heap never trimmed below 2 GiB, those
    pages stay mapped; the peak memory is what the largest step needs, as before.
    Returns whether the settings took.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # glibc's; musl has none
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    m_trim_threshold, m_top_pad, m_mmap_max = -1, -2, -4  # glibc's <malloc.h>
    settings = [(m_mmap_max, 0), (m_trim_threshold, 2**31 - 1), (m_top_pad, 64 << 20)]
    return all(mallopt(option, value) == 1 for option, value in settings)


@dataclass(frozen=True)
class Precision:
    """The resolved numeric precision: ``name`` (fp32, bf16, fp16; int8: a translation model
    whose linear layers are int8, see :mod:`seq2seq_attn.models.int8`) on ``device_type``."""

    name: str
    device_type: str

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype, or None for fp32."""
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast to :attr:`dtype` (a no-op context for fp32)."""
        dtype = self.dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A gradient scaler, enabled for fp16 only (bf16 has fp32's exponent range)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.name == "fp16")


def resolve_precision(name: str, device: torch.device, option: str) -> Precision:
    """``name`` (what the user typed as ``option``: ``train.precision``, ``--precision``) on
    ``device``: ``auto`` picks bf16 on CUDA with bf16 support and on
    CPUs with native bf16, fp16 on older GPUs, fp32 otherwise; fp16 needs CUDA."""
    on_cuda = device.type == "cuda"
    if name == "auto":
        if on_cuda:
            name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            name = "bf16" if cpu_has_fast_bf16() else "fp32"
    if name == "fp16" and not on_cuda:
        raise ConfigError(
            f"{option}: invalid value 'fp16' on the CPU; fp16 needs CUDA: use bf16 or fp32"
        )
    if name == "bf16" and not on_cuda and not cpu_has_fast_bf16():
        logger.warning("this CPU has no native bf16 (AMX/AVX-512 BF16): bf16 will be slow")
    return Precision(name, device.type)
