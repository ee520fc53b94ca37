"""Fixtures shared by the test modules."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

TOY = Path(__file__).resolve().parents[1] / "data" / "toy"


@pytest.fixture(scope="module")
def one_thread():
    """Run torch on one thread: tiny models are fastest that way, and steady on a busy machine.

    Use it per module with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """400 training and 20 dev pairs of the toy corpus (``train.src`` ...), with room for a
    data cache under ``cache/`` shared by one test module (some tests move it)."""
    return corpus_slice(TOY, tmp_path_factory.mktemp("corpus"), train=400, dev=20)


def corpus_slice(source: Path, directory: Path, **counts: int) -> Path:
    """The first ``counts[split]`` pairs of each split of a generated corpus in ``source``
    (``train.src`` ...), written into ``directory``."""
    for split, count in counts.items():
        for side in ("src", "tgt"):
            lines = (source / f"{split}.{side}").read_text(encoding="utf-8").splitlines()[:count]
            (directory / f"{split}.{side}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory
