"""Start-up cost: ``attn-translate`` must not import what only training needs.

HF datasets (with pandas, pyarrow and an HTTP client) and matplotlib once cost about a third of
a one-line translation's start-up; a fresh interpreter loads each command's entry point and
must find none of them in ``sys.modules``.
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = (
    "datasets", "pandas", "pyarrow", "requests", "aiohttp", "httpx", "huggingface_hub", "fsspec",
    "matplotlib", "seq2seq_attn.data", "seq2seq_attn.train",
)  # fmt: skip

PROBE = """
import json, sys
from importlib.metadata import entry_points
command = entry_points(group="console_scripts")[sys.argv[1]]
command.load()
print(json.dumps({"target": command.value, "heavy": sorted(set(sys.argv[2:]) & set(sys.modules))}))
"""


def loaded_by(command: str) -> dict:
    """What loading ``command``'s entry point in a fresh interpreter imports of :data:`HEAVY`."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE, command, *HEAVY], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout)


def test_attn_translate_starts_without_training_libraries():
    found = loaded_by("attn-translate")
    assert found["target"] == "seq2seq_attn.cli.translate_cmd:translate_app"
    assert found["heavy"] == []


def test_the_probe_sees_heavy_imports():
    """attn-train does need HF datasets and the loop: the probe must notice them."""
    assert {"datasets", "seq2seq_attn.train"} <= set(loaded_by("attn-train")["heavy"])
