"""TensorBoard events of a training run (``train.tensorboard``), read back with TensorBoard's
own event reader: scalars against ``metrics.jsonl``, samples, the attention image, the config as
hyper-parameters, a resumed run without duplicated steps, and the error without the package."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")

from tensorboard.backend.event_processing.event_accumulator import (
    IMAGES,
    SCALARS,
    TENSORS,
    EventAccumulator,
)
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from test_train import toy_config
from torch.utils.tensorboard import SummaryWriter
from typer.testing import CliRunner

from seq2seq_attn.cli import train_app
from seq2seq_attn.config import ConfigError, to_yaml
from seq2seq_attn.rundir import TENSORBOARD_DIR, read_metrics
from seq2seq_attn.tensorboard_log import flat_hparams, samples_markdown
from seq2seq_attn.train import train

pytestmark = pytest.mark.usefixtures("one_thread")

TRAIN_TAGS = ["grad_norm", "loss", "lr", "perplexity", "tokens_per_second"]
DEV_TAGS = ["bleu", "chrf", "loss", "perplexity"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def read_events(run_dir: Path) -> EventAccumulator:
    """Every event of a run's TensorBoard directory (nothing sampled away)."""
    events = EventAccumulator(
        str(run_dir / TENSORBOARD_DIR), size_guidance={SCALARS: 0, IMAGES: 0, TENSORS: 0}
    )
    return events.Reload()


def scalars(events: EventAccumulator, tag: str) -> dict[int, float]:
    """One scalar tag as {step: value}, refusing a step logged twice."""
    found = [(event.step, event.value) for event in events.Scalars(tag)]
    steps = [step for step, _ in found]
    assert len(steps) == len(set(steps)), f"{tag}: steps logged twice: {steps}"
    return dict(found)


@pytest.fixture(scope="module")
def logged_run(corpus, tmp_path_factory) -> Path:
    """10 steps, train scalars every 2, validations at 5 and 10, with TensorBoard on."""
    run_dir = tmp_path_factory.mktemp("tensorboard") / "run"
    config = toy_config(corpus, max_steps=10, validate_every=5, log_every=2, tensorboard=True)
    train(config, run_dir)
    return run_dir


def test_scalars_match_the_metrics_file(logged_run):
    events = read_events(logged_run)
    assert sorted(events.Tags()["scalars"]) == sorted(
        [f"dev/{name}" for name in DEV_TAGS] + [f"train/{name}" for name in TRAIN_TAGS]
    )
    trained = read_metrics(logged_run, "train")
    for name in TRAIN_TAGS:
        logged = scalars(events, f"train/{name}")
        assert list(logged) == [2, 4, 6, 8, 10]
        expected = [record[name] for record in trained]
        assert list(logged.values()) == pytest.approx(expected, rel=1e-6)  # float32 in events
    assert all(value > 0 for value in scalars(events, "train/grad_norm").values())
    validated = read_metrics(logged_run, "valid")
    for name in ("bleu", "chrf", "loss"):
        logged = scalars(events, f"dev/{name}")
        assert list(logged) == [5, 10]
        assert list(logged.values()) == pytest.approx([r[name] for r in validated], rel=1e-6)


def test_validations_show_samples_and_an_attention_heatmap(logged_run, corpus):
    events = read_events(logged_run)
    texts = events.Tensors("dev/samples/text_summary")
    assert [event.step for event in texts] == [5, 10]
    table = texts[-1].tensor_proto.string_val[0].decode("utf-8").splitlines()
    assert table[0] == "| source | reference | hypothesis |" and len(table) == 2 + 3
    first_src, first_ref = (
        (corpus / f"dev.{side}").read_text(encoding="utf-8").splitlines()[0]
        for side in ("src", "tgt")
    )
    assert table[2].startswith(f"| {first_src} | {first_ref} | ")
    images = events.Images("dev/attention")
    assert [event.step for event in images] == [5, 10]
    assert all(image.encoded_image_string.startswith(PNG_MAGIC) for image in images)
    assert all(image.width > 100 and image.height > 100 for image in images)


def test_the_config_is_recorded_as_hyperparameters(logged_run):
    events = read_events(logged_run)
    content = events.PluginTagToContent("hparams")
    started = HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    values = started.session_start_info.hparams
    assert values["train.lr"].number_value == pytest.approx(3e-3)
    assert values["model.family"].string_value == "transformer"
    assert values["train.tensorboard"].string_value == "true"
    experiment = HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {info.name.tag for info in experiment.metric_infos} >= {"dev/bleu", "dev/loss"}


def test_a_resumed_run_continues_the_curves_without_duplicated_steps(corpus, tmp_path):
    run_dir = tmp_path / "run"
    config = toy_config(corpus, max_steps=4, validate_every=4, log_every=2, tensorboard=True)
    train(config, run_dir)
    # a crashed later session would have logged past last.pt (step 4): the resume hides that
    with SummaryWriter(str(run_dir / TENSORBOARD_DIR)) as crashed:
        for step in (6, 8):
            crashed.add_scalar("train/loss", 999.0, step)
            crashed.add_scalar("dev/bleu", 999.0, step)
    config.train.max_steps = 8
    train(config, run_dir, resume=True)
    events = read_events(run_dir)
    for name in TRAIN_TAGS:
        assert list(scalars(events, f"train/{name}")) == [2, 4, 6, 8]
    assert list(scalars(events, "dev/bleu")) == [4, 8]
    trained = [record["loss"] for record in read_metrics(run_dir, "train")]
    assert list(scalars(events, "train/loss").values()) == pytest.approx(trained, rel=1e-6)
    assert [event.step for event in events.Images("dev/attention")] == [4, 8]
    assert [event.step for event in events.Tensors("dev/samples/text_summary")] == [4, 8]


@pytest.fixture
def without_tensorboard(monkeypatch):
    """Pretend the tensorboard package is not installed."""
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "tensorboard" else find_spec(name, *args),
    )


def test_a_missing_package_fails_before_any_work(corpus, tmp_path, without_tensorboard):
    with pytest.raises(ConfigError, match=r"pip install 'seq2seq-attn\[tensorboard\]'"):
        train(toy_config(corpus, tensorboard=True), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    train(toy_config(corpus, max_steps=1, validate_every=0), tmp_path / "off")  # off: no need


def test_the_cli_flag_turns_it_on_and_off(corpus, tmp_path, without_tensorboard):
    config_file = tmp_path / "c.yaml"
    config_file.write_text(to_yaml(toy_config(corpus, max_steps=1, validate_every=0)))
    arguments = [str(config_file), "--run-dir", str(tmp_path / "run")]
    result = CliRunner().invoke(train_app, [*arguments, "--tensorboard"])
    assert result.exit_code == 2
    assert "seq2seq-attn[tensorboard]" in " ".join(result.output.split())
    plain = yaml.safe_load(config_file.read_text())
    plain["train"]["tensorboard"] = True
    config_file.write_text(yaml.safe_dump(plain))
    result = CliRunner().invoke(train_app, [*arguments, "--no-tensorboard"])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "run" / TENSORBOARD_DIR).exists()


def test_hyperparameters_are_flat_and_typed():
    plain = {"train": {"lr": 0.1, "betas": [0.9, 0.98], "tensorboard": True, "max_steps": None}}
    assert flat_hparams(plain) == {
        "train.lr": 0.1,
        "train.betas": "[0.9, 0.98]",
        "train.tensorboard": "true",
        "train.max_steps": "null",
    }


def test_samples_show_as_written_in_markdown():
    table = samples_markdown([("a | b", "*c*", "")])
    assert table.splitlines()[2] == r"| a \| b | \*c\* |   |"
