"""Device, precision and machine facts read from /proc/cpuinfo (a fake one here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from seq2seq_attn import device

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: fpu sse2 avx512f {extra}

processor\t: 1
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: fpu sse2 avx512f {extra}
"""


def fake_cpuinfo(monkeypatch, tmp_path: Path, extra_flags: str) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO.format(extra=extra_flags))
    monkeypatch.setattr(device, "CPUINFO", path)


@pytest.mark.parametrize(
    ("flags", "native"), [("avx512_bf16", True), ("amx_bf16 amx_tile", True), ("avx2", False)]
)
def test_native_bf16_is_read_from_the_cpu_flags(monkeypatch, tmp_path, flags, native):
    fake_cpuinfo(monkeypatch, tmp_path, flags)
    assert device.cpu_has_fast_bf16() is native
    assert device.resolve_precision("auto", torch.device("cpu"), "train.precision").name == (
        "bf16" if native else "fp32"
    )


def test_machine_info_names_the_cpu_model(monkeypatch, tmp_path):
    fake_cpuinfo(monkeypatch, tmp_path, "avx512_bf16")
    info = device.machine_info()
    assert info["cpu"] == "AMD EPYC 9R14 96-Core Processor"
    assert info["cpu_native_bf16"] is True
    assert info["torch"] == torch.__version__ and info["torch_threads"] == torch.get_num_threads()


def test_without_cpuinfo_the_platform_answers(monkeypatch, tmp_path):
    monkeypatch.setattr(device, "CPUINFO", tmp_path / "absent")
    assert device.cpu_has_fast_bf16() is False
    assert device.cpu_model()  # platform.processor() or the machine type


FAULT_PROBE = """
import resource, sys, torch
from seq2seq_attn.device import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
for step in range(5):  # what a training step does: the same large tensors, written and freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    logits, other = torch.ones(65 << 20, dtype=torch.uint8), torch.ones(16 << 20, dtype=torch.uint8)
    del logits, other
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)  # the last step's faults
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator only")
def test_freed_memory_is_kept_so_tensors_allocated_again_fault_in_no_pages():
    def faults(mode: str) -> int:
        run = subprocess.run([sys.executable, "-c", FAULT_PROBE, mode], capture_output=True,
                             text=True, check=True)  # fmt: skip
        return int(run.stdout)

    default, kept = faults("default"), faults("keep")
    if default < (65 << 20) // 4096 // 8:  # e.g. transparent huge pages for every mapping
        pytest.skip(f"this kernel faults in a fresh 65 MB block in {default} faults: no cost")
    assert kept < default // 10  # glibc maps the block afresh each time; kept, the heap has it
