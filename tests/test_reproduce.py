"""scripts/reproduce.py end to end on a Multi30k-shaped slice of the toy corpus with tiny models:
the report, scores equal to the sacrebleu command line, skipping finished steps, resuming an
interrupted training, and clear errors."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from seq2seq_attn import benchmark_run
from seq2seq_attn.benchmark import LENGTH_PENALTIES
from seq2seq_attn.checkpoint import load_checkpoint
from seq2seq_attn.config import load_config
from seq2seq_attn.events import TrainCallback
from seq2seq_attn.multi30k import PrepareError, read_split
from seq2seq_attn.rundir import read_metrics, read_summary
from seq2seq_attn.train import train
from seq2seq_attn.translation import TranslationSettings, open_translator

pytestmark = pytest.mark.usefixtures("one_thread")
pytest.importorskip("matplotlib", reason="the report's pictures need the plot extra")

ROOT = Path(__file__).resolve().parent.parent
HAVE_SACREMOSES = importlib.util.find_spec("sacremoses") is not None
TOY = ROOT / "data" / "toy"
SCRIPT = ROOT / "scripts" / "reproduce.py"
SPLITS = {  # Multi30k split -> (toy split, lines)
    "train": ("train", 400),
    "val": ("dev", 20),
    "test_2016_flickr": ("test", 24),
    "test_2017_flickr": ("test", 12),
    "test_2017_mscoco": ("dev", 10),
}
TINY = [
    "tokenizer.vocab_size=64", "data.max_tokens=256", "data.max_length=40",
    "model.max_positions=64",
    "model.transformer.d_model=32", "model.transformer.num_heads=4",
    "model.transformer.encoder_layers=1", "model.transformer.decoder_layers=1",
    "model.transformer.ff_size=64", "model.rnn.embedding_size=16", "model.rnn.hidden_size=32",
    "model.rnn.attention_size=16", "train.max_steps=20", "train.validate_every=10",
    "train.save_every=10", "train.warmup_steps=5", "train.lr=0.003", "train.precision=fp32",
    "train.max_minutes=null", "decode.max_length_offset=3",
]  # fmt: skip


def load_script():
    spec = importlib.util.spec_from_file_location("reproduce", ROOT / "scripts" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


repro = load_script()


def sacrebleu_cli(references: Path, hypotheses: Path, *options: str) -> float:
    """A score from the ``sacrebleu`` command line (4 decimals)."""
    command = [Path(sys.executable).with_name("sacrebleu"), references, "-i", hypotheses, "-b",
               "-w", "4", *options]  # fmt: skip
    return float(subprocess.run(command, capture_output=True, check=True, text=True).stdout)


def make_data(directory: Path) -> Path:
    """Toy pairs under Multi30k's file names as a de-en pair (test_2017_mscoco's references
    capitalised, as real ones are)."""
    directory.mkdir(parents=True, exist_ok=True)
    for split, (toy_split, count) in SPLITS.items():
        for lang, side in (("de", "src"), ("en", "tgt")):
            lines = (TOY / f"{toy_split}.{side}").read_text(encoding="utf-8").splitlines()[:count]
            if split == "test_2017_mscoco" and lang == "en":
                lines = [line.capitalize() for line in lines]
            (directory / f"{split}.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


def arguments(base: Path, *extra: str) -> list[str]:
    """The script's command line for a workspace under ``base``."""
    return [
        "--data", str(base / "data"), "--runs", str(base / "runs"),
        "--results", str(base / "results"), "--precision", "fp32",
        "--set", f"data.cache_dir={base / 'cache'}", *[f"--set={o}" for o in TINY], *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """One complete run of the script (Transformer and RNN) in a fresh workspace."""
    base = tmp_path_factory.mktemp("reproduce")
    make_data(base / "data")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        assert repro.main(arguments(base)) == 0
    return base


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG file, read from its header (which must be a PNG's)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_the_report_holds_the_runs_figures(workspace):
    report = json.loads((workspace / "results" / "multi30k-de-en.json").read_text())
    assert set(report["models"]) == {"transformer", "rnn-bahdanau"}
    assert report["machine"]["torch"] == torch.__version__ and report["machine"]["cpu"]
    markdown = (workspace / "results" / "multi30k-de-en.md").read_text()
    for name, model in report["models"].items():
        run_dir = workspace / "runs" / "multi30k-de-en" / name
        summary = read_summary(run_dir)
        assert (model["steps"], model["max_steps"], model["stop_reason"]) == (20, 20, "max_steps")
        assert (model["precision"], model["translate_precision"]) == ("fp32", "fp32")
        assert model["params"] == summary.num_parameters > 0
        assert model["train_minutes"] == pytest.approx(summary.elapsed / 60)
        assert model["train_tokens_per_s"] == pytest.approx(summary.target_tokens_per_second)
        validations = read_metrics(run_dir, "valid")
        best = max(validations, key=lambda record: record["bleu"])
        assert (model["best_dev_bleu"], model["best_step"]) == (best["bleu"], best["step"])
        choice = model["checkpoint"]  # chosen on dev BLEU between best.pt and the average
        assert set(choice["dev_bleu_greedy"]) == {"best.pt", "averaged-2.pt"}
        assert choice["checkpoint"] == max(
            choice["dev_bleu_greedy"], key=choice["dev_bleu_greedy"].get
        )
        assert choice["averaged_steps"] == {"averaged-2.pt": [10, 20]}
        assert (run_dir / "averaged-2.pt").is_file()
        beam_bleu = {float(p): bleu for p, bleu in choice["dev_bleu_beam"].items()}
        assert sorted(beam_bleu) == sorted(LENGTH_PENALTIES)
        assert choice["length_penalty"] == max(beam_bleu, key=beam_bleu.get)
        assert set(model["tests"]) == {"test_2016_flickr", "test_2017_flickr", "test_2017_mscoco"}
        test2016 = model["tests"]["test_2016_flickr"]
        row = next(line for line in markdown.splitlines() if line.startswith(f"| {name} | "))
        for figure in (
            f"{test2016['bleu']:.2f}",
            f"{test2016['bleu_lc']:.2f}",
            "20 (20)",
            f"{model['best_dev_bleu']:.2f} ({model['best_step']})",
            "fp32 / fp32",
            *([f"{test2016['bleu_lc_moses']:.2f}"] if HAVE_SACREMOSES else []),
        ):
            assert figure in row
        assert "(time guard)" not in row
        assert "budget 20 steps, no time guard; stopped by its step budget" in markdown
        assert len(model["attention_pictures"]) == 2
        assert model["learning_curves"] == f"multi30k-de-en-{name}-curves.png"
        assert png_size(workspace / "results" / model["learning_curves"]) == (1100, 770)
        assert f"]({model['learning_curves']})" in markdown
        for picture in model["attention_pictures"]:
            assert f"]({picture})" in markdown
    assert report["models"]["transformer"]["anchor"]["bleu_lc"] == 36.5


def test_the_heatmaps_picture_the_first_short_test_sentences(workspace):
    """Each picture is the attention of its own sentence: its size follows that sentence's
    source and translation tokens (what plot_attention sizes a figure by)."""
    sources = (workspace / "data" / "test_2016_flickr.de").read_text().splitlines()
    short = [i for i, line in enumerate(sources) if len(line.split()) <= 12][:2]
    checkpoint_choice = json.loads(
        (workspace / "results" / "multi30k-de-en" / "transformer" / "checkpoint.json").read_text()
    )["checkpoint"]
    translator = open_translator(
        workspace / "runs" / "multi30k-de-en" / "transformer" / checkpoint_choice,
        TranslationSettings(beam_size=5),
    )
    for index, hypothesis in zip(
        short, translator.translate([sources[i] for i in short]), strict=True
    ):
        record = translator.attention(index + 1, sources[index], hypothesis)
        width = max(4.0, 0.45 * len(record["src_tokens"]) + 1.5)
        height = max(3.0, 0.4 * len(record["tgt_tokens"]) + 1.2)
        picture = workspace / "results" / f"multi30k-de-en-transformer-attention-{index + 1}.png"
        assert png_size(picture) == (round(width * 120), round(height * 120))


def test_two_runs_with_the_same_budget_write_identical_scores(workspace, tmp_path):
    make_data(tmp_path / "data")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        assert repro.main(arguments(tmp_path)) == 0
    first, second = (base / "results" / "multi30k-de-en" for base in (workspace, tmp_path))
    for name in ("transformer", "rnn-bahdanau"):
        for split in ("test_2016_flickr", "test_2017_flickr", "test_2017_mscoco"):
            scores = [
                json.loads((root / name / f"{split}.json").read_text()) for root in (first, second)
            ]
            assert [{k: v for k, v in s.items() if k != "seconds"} for s in scores] == [
                {k: v for k, v in scores[0].items() if k != "seconds"}
            ] * 2
            assert (first / name / f"{split}.hyp").read_bytes() == (
                second / name / f"{split}.hyp"
            ).read_bytes()
        assert (first / name / "checkpoint.json").read_text() == (
            second / name / "checkpoint.json"
        ).read_text()
        figures = [json.loads((root / name / "train.json").read_text()) for root in (first, second)]
        for key in ("steps", "best_dev_bleu", "best_step", "params", "stop_reason"):
            assert figures[0][key] == figures[1][key]


def test_a_direction_config_wins_and_the_time_guard_is_flagged(tmp_path, capsys):
    make_data(tmp_path / "data")
    configs = tmp_path / "configs"
    configs.mkdir()
    shipped = (ROOT / "data" / "configs" / "multi30k-transformer.yaml").read_text()
    (configs / "multi30k-de-en-transformer.yaml").write_text(
        shipped.replace("seed: 1234", "seed: 4321")
    )
    guard = [
        "--configs",
        str(configs),
        "--models",
        "transformer",
        "--set",
        "train.max_minutes=0.002",
        "--set",
        "train.max_steps=100000",  # only the guard can end it, however fast the machine
    ]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        assert repro.main(arguments(tmp_path, *guard)) == 0
    run_dir = tmp_path / "runs" / "multi30k-de-en" / "transformer"
    assert load_config(run_dir / "config.yaml").train.seed == 4321
    assert "train.max_minutes=0.002 stopped it at step" in capsys.readouterr().out
    model = json.loads((tmp_path / "results" / "multi30k-de-en.json").read_text())["models"][
        "transformer"
    ]
    assert model["stop_reason"] == "max_minutes" and model["steps"] < 100000
    markdown = (tmp_path / "results" / "multi30k-de-en.md").read_text()
    assert f"| {model['steps']} (100000) (time guard) |" in markdown
    assert "WARNING: before its step budget" in markdown
    (configs / "multi30k-de-en-transformer.yaml").unlink()
    assert repro.main(arguments(tmp_path, "--configs", str(configs), "--models", "rnn-luong")) == 2
    assert "no config for rnn-luong" in capsys.readouterr().err


def test_importing_the_script_leaves_the_environment_alone():
    probe = (
        "import importlib.util, os, sys\n"
        f"spec = importlib.util.spec_from_file_location('r', {str(SCRIPT)!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "sys.modules['r'] = module\n"
        "spec.loader.exec_module(module)\n"
        "print(os.environ.get('HF_DATASETS_OFFLINE'))\n"
    )
    environment = {key: value for key, value in os.environ.items() if key != "HF_DATASETS_OFFLINE"}
    result = subprocess.run(
        [sys.executable, "-c", probe], env=environment, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "None"


@pytest.mark.parametrize("model", ["transformer", "rnn-bahdanau"])
@pytest.mark.parametrize("split", ["test_2016_flickr", "test_2017_mscoco"])
def test_scores_equal_the_sacrebleu_command_line(workspace, model, split):
    work = workspace / "results" / "multi30k-de-en" / model
    hypotheses = work / f"{split}.hyp"
    references = workspace / "data" / f"{split}.en"
    assert len(hypotheses.read_text().splitlines()) == len(references.read_text().splitlines())
    scores = json.loads((work / f"{split}.json").read_text())

    def cli(*options: str) -> float:
        return sacrebleu_cli(references, hypotheses, *options)

    assert scores["bleu"] == pytest.approx(cli("-m", "bleu"), abs=0.01)
    assert scores["bleu_lc"] == pytest.approx(cli("-m", "bleu", "-lc"), abs=0.01)
    assert scores["chrf"] == pytest.approx(cli("-m", "chrf"), abs=0.01)


def test_the_chosen_length_penalty_translates_and_a_new_choice_translates_again(
    workspace, tmp_path, monkeypatch
):
    base = tmp_path / "copy"
    shutil.copytree(workspace, base)
    work = base / "results" / "multi30k-de-en" / "transformer"
    choice = json.loads((work / "checkpoint.json").read_text())
    calls = []  # (beam size, length penalty) of every translator the script makes
    make_translator = benchmark_run.translator_for

    def recording(checkpoint, precision, beam_size=benchmark_run.BEAM_SIZE, length_penalty=None):
        calls.append((beam_size, length_penalty))
        return make_translator(checkpoint, precision, beam_size, length_penalty)

    monkeypatch.setattr(benchmark_run, "translator_for", recording)
    choice["length_penalty"] = 3.5  # a choice of its own, newer than the test translations
    (work / "checkpoint.json").write_text(json.dumps(choice))
    assert repro.main(arguments(base, "--models", "transformer")) == 0
    assert calls == [(5, 3.5), (5, 3.5)]  # the test sets, then the heatmaps
    for split in ("test_2016_flickr", "test_2017_flickr", "test_2017_mscoco"):
        scores = json.loads((work / f"{split}.json").read_text())
        assert (scores["checkpoint"], scores["length_penalty"]) == (choice["checkpoint"], 3.5)
    report = (base / "results" / "multi30k-de-en.md").read_text()
    assert "with length penalty 3.5" in report
    calls.clear()
    assert repro.main(arguments(base, "--models", "transformer")) == 0
    assert calls == []  # nothing changed: nothing translated again
    del choice["length_penalty"]  # as an older script wrote it: chosen again
    (work / "checkpoint.json").write_text(json.dumps(choice))
    assert repro.main(arguments(base, "--models", "transformer")) == 0
    again = json.loads((work / "checkpoint.json").read_text())
    assert again["length_penalty"] in LENGTH_PENALTIES
    assert (1, None) in calls and len([c for c in calls if c[0] == 5]) >= len(LENGTH_PENALTIES)


def test_a_second_run_skips_every_finished_step(workspace, capsys):
    results = workspace / "results"
    watched = [
        workspace / "runs" / "multi30k-de-en" / "transformer" / "last.pt",
        workspace / "runs" / "multi30k-de-en" / "transformer" / "averaged-2.pt",
        results / "multi30k-de-en" / "rnn-bahdanau" / "test_2016_flickr.hyp",
        *(results / name for name in json.loads((results / "multi30k-de-en.json").read_text())[
            "models"]["transformer"]["attention_pictures"]),
    ]  # fmt: skip
    before = [path.stat().st_mtime_ns for path in watched]
    capsys.readouterr()
    assert repro.main(arguments(workspace, "--models", "transformer")) == 0
    output = capsys.readouterr().out
    assert [path.stat().st_mtime_ns for path in watched] == before
    assert "skipping preparation" in output and "trained already" in output
    assert "translating" not in output
    report = json.loads((results / "multi30k-de-en.json").read_text())
    assert set(report["models"]) == {"transformer", "rnn-bahdanau"}  # finished earlier: kept


def test_an_interrupted_training_resumes_from_its_last_checkpoint(tmp_path, capsys):
    make_data(tmp_path / "data")
    config_path = ROOT / "data" / "configs" / "multi30k-transformer.yaml"
    data = tmp_path / "data"
    overrides = [
        "data.src_lang=de", "data.tgt_lang=en", f"data.train={data / 'train'}",
        f"data.dev={data / 'val'}", f"data.test={data / 'test_2016_flickr'}",
        f"data.cache_dir={tmp_path / 'cache'}", *TINY,
    ]  # fmt: skip
    stop = threading.Event()

    class StopAtStep7(TrainCallback):
        def on_step(self, report):
            if report.step == 7:
                stop.set()

    run_dir = tmp_path / "runs" / "multi30k-de-en" / "transformer"
    summary = train(load_config(config_path, overrides), run_dir, callbacks=[StopAtStep7()],
                    stop=stop)  # fmt: skip
    assert (summary.reason, summary.step) == ("stopped", 7)
    assert repro.main(arguments(tmp_path, "--models", "transformer")) == 0
    assert "resuming" in capsys.readouterr().out
    progress = load_checkpoint(run_dir / "last.pt")["progress"]
    assert progress["step"] == 20
    assert "from step 7" in (run_dir / "train.log").read_text()


def test_bad_requests_get_clear_errors(tmp_path, capsys, monkeypatch):
    assert repro.main(["--pair", "de-xx"]) == 2
    assert "--pair 'de-xx'" in capsys.readouterr().err
    assert repro.main(["--models", "transformer", "gru", "--data", str(tmp_path)]) == 2
    assert "unknown ['gru']" in capsys.readouterr().err
    empty = tmp_path / "raw"
    empty.mkdir()
    monkeypatch.setenv("MULTI30K_DIR", str(empty))
    assert repro.main(arguments(tmp_path)) == 2
    assert "neither train.de.gz nor train.de is there" in capsys.readouterr().err
    make_data(tmp_path / "data")
    leftover = tmp_path / "runs" / "multi30k-de-en" / "transformer"
    leftover.mkdir(parents=True)
    (leftover / "step-00000010.pt").write_text("mine")
    assert repro.main(arguments(tmp_path)) == 2
    assert f"{leftover}: holds checkpoints but no last.pt" in capsys.readouterr().err
    assert [p.name for p in leftover.iterdir()] == ["step-00000010.pt"]
    (tmp_path / "data" / "val.en").write_text("one line\n")
    with pytest.raises(PrepareError, match=r"val\.de has 20 lines but .*val\.en has 1"):
        read_split(tmp_path / "data", "val", "de", "en")
    (tmp_path / "data" / "val.en").write_bytes(b"ok\ncaf\xe9\n")
    with pytest.raises(PrepareError, match=r"val\.en:2: not valid UTF-8"):
        read_split(tmp_path / "data", "val", "de", "en")
    (tmp_path / "results" / "multi30k-de-en" / "transformer").mkdir(parents=True)
    (tmp_path / "results" / "multi30k-de-en" / "transformer" / "train.json").write_text("{")
    shutil.rmtree(leftover)
    assert repro.main(arguments(tmp_path, "--models", "transformer")) == 2
    assert "train.json: damaged" in capsys.readouterr().err
    (tmp_path / "results" / "multi30k-de-en" / "transformer" / "train.json").write_text("{}")
    assert repro.main(arguments(tmp_path, "--models", "transformer")) == 2
    assert "train.json: written by an older make reproduce" in capsys.readouterr().err


def test_ctrl_c_stops_cleanly_and_the_next_run_resumes(tmp_path, capsys):
    make_data(tmp_path / "data")
    run_dir = tmp_path / "runs" / "multi30k-de-en" / "transformer"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("left by a run killed during its setup\n")
    command = [sys.executable, str(ROOT / "scripts" / "reproduce.py"), "--models", "transformer",
               *arguments(tmp_path, "--set", "train.max_steps=100000")]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while not (run_dir / "last.pt").is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)  # what Ctrl-C sends the script
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "interrupted: run `make reproduce` again" in stderr
    stopped_at = load_checkpoint(run_dir / "last.pt")["progress"]["step"]
    assert stopped_at >= 10
    aside = [p for p in run_dir.parent.iterdir() if p.name.startswith("transformer.incomplete-")]
    assert len(aside) == 1 and (aside[0] / "config.yaml").read_text().startswith("left by")
    limit = f"train.max_steps={stopped_at + 10}"
    assert repro.main(arguments(tmp_path, "--models", "transformer", "--set", limit)) == 0
    assert "resuming" in capsys.readouterr().out
    assert load_checkpoint(run_dir / "last.pt")["progress"]["step"] == stopped_at + 10


def test_make_reproduce_passes_the_pair_and_models_on():
    command = [
        "make",
        "-n",
        "-C",
        str(ROOT),
        "reproduce",
        "PAIR=en-de",
        "MODELS=transformer rnn-luong",
    ]
    lines = subprocess.run(command, capture_output=True, check=True, text=True).stdout
    assert "scripts/reproduce.py --pair en-de --models transformer rnn-luong" in lines
