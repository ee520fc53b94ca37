"""Start-up cost: ``attn-translate`` must not import what only training (or only an exported
folder) needs, nor any command's ``--help``.

HF datasets (with pandas, pyarrow and an HTTP client) and matplotlib once cost about a third of
a one-line translation's start-up; CTranslate2 is imported only for an exported folder. A
fresh interpreter runs a command's entry point for real and reports which of them ended up in
``sys.modules``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from seq2seq_attn.config import config_from_plain, to_yaml
from seq2seq_attn.train import train

HEAVY = (
    "datasets", "pandas", "pyarrow", "requests", "aiohttp", "httpx", "huggingface_hub", "fsspec",
    "matplotlib", "seq2seq_attn.data", "seq2seq_attn.train", "ctranslate2",
)  # fmt: skip

PROBE = """
import json, sys
from importlib.metadata import entry_points
command = entry_points(group="console_scripts")[sys.argv[1]]
heavy = sys.argv[2].split(",")
try:
    command.load()(sys.argv[3:])
except SystemExit as done:
    assert not done.code, f"the command failed: {done.code}"
loaded = sorted(set(heavy) & set(sys.modules))
print(json.dumps({"target": command.value, "heavy": loaded}), file=sys.stderr)
"""


def tiny_config(corpus: Path, steps: int):
    """A tiny Transformer config on the toy corpus slice, trained for ``steps`` steps."""
    return config_from_plain(
        {
            "data": {"src_lang": "src", "tgt_lang": "tgt", "train": str(corpus / "train"),
                     "dev": "", "test": "", "max_tokens": 256, "max_length": 40,
                     "cache_dir": str(corpus / "cache")},
            "tokenizer": {"vocab_size": 64},
            "model": {"max_positions": 48, "transformer": {"d_model": 16, "num_heads": 2,
                      "encoder_layers": 1, "decoder_layers": 1, "ff_size": 32}},
            "train": {"max_steps": steps, "precision": "fp32", "device": "cpu"},
        }
    )  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(corpus, tmp_path_factory) -> Path:
    """A tiny Transformer after two steps (what matters here is what loading it imports)."""
    directory = tmp_path_factory.mktemp("startup") / "run"
    return train(tiny_config(corpus, steps=2), directory).last_checkpoint


def run_probe(command: str, *arguments: str, stdin: str = "") -> dict:
    """Run ``command`` in a fresh interpreter; what it imported of :data:`HEAVY`."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE, command, ",".join(HEAVY), *arguments],
        input=stdin, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(result.stderr.strip().splitlines()[-1])


def test_translating_a_line_imports_no_training_library(checkpoint, tmp_path):
    reference = tmp_path / "ref.txt"
    reference.write_text("ta ge\n")
    options = ["--beam", "2", "--n-best", "2", "--ref", str(reference),
               "--attention", str(tmp_path / "attention.json")]  # fmt: skip
    found = run_probe("attn-translate", str(checkpoint), *options, stdin="ta zo li\n")
    assert found["target"] == "seq2seq_attn.cli.translate_cmd:translate_app"
    assert found["heavy"] == []
    assert json.loads((tmp_path / "attention.json").read_text())[0]["index"] == 0  # it ran


def test_help_imports_no_training_library():
    for command in ("attn-train", "attn-translate", "attn-export"):
        assert run_probe(command, "--help")["heavy"] == [], command


def test_the_probe_sees_heavy_imports(corpus, tmp_path):
    """Training does need HF datasets and the loop: the probe must notice them."""
    config = tmp_path / "tiny.yaml"
    config.write_text(to_yaml(tiny_config(corpus, steps=1)))
    found = run_probe("attn-train", str(config), "--run-dir", str(tmp_path / "run"))
    assert {"datasets", "seq2seq_attn.train"} <= set(found["heavy"])
    assert (tmp_path / "run" / "last.pt").is_file()  # it trained
