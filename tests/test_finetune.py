"""Starting a new run from a trained model (``--init-from``): its weights and tokenizer, a
fresh optimizer, schedule and step counter, the model section checked, exact resume."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import yaml
from conftest import corpus_slice
from test_train import Recorder, toy_config

from seq2seq_attn.checkpoint import CheckpointError, load_checkpoint
from seq2seq_attn.config import ConfigError, config_from_plain, to_plain, to_yaml
from seq2seq_attn.rundir import read_summary
from seq2seq_attn.train import train

pytestmark = pytest.mark.usefixtures("one_thread")

TOY_B = Path(__file__).resolve().parents[1] / "data" / "toy-b"


@pytest.fixture(scope="module")
def base_run(corpus, tmp_path_factory) -> Path:
    """A tiny model trained on the toy corpus slice (domain A), validated at steps 5 and 10."""
    run_dir = tmp_path_factory.mktemp("base") / "run"
    train(toy_config(corpus, max_steps=10, validate_every=5, save_every=5), run_dir)
    return run_dir


@pytest.fixture(scope="module")
def domain_b(tmp_path_factory) -> Path:
    """200 training and 20 dev pairs of the toy corpus's second domain."""
    return corpus_slice(TOY_B, tmp_path_factory.mktemp("domain-b"), train=200, dev=20)


def weights(path: Path) -> dict[str, torch.Tensor]:
    """The model weights of a checkpoint file."""
    return load_checkpoint(path)["model"]


def test_a_new_run_starts_with_the_models_weights_and_tokenizer(base_run, domain_b, tmp_path):
    config = toy_config(domain_b)
    config.tokenizer.vocab_size = 99  # not used: the tokenizer is the model's
    stop = threading.Event()
    stop.set()  # stop before the first step: last.pt then holds the weights the run starts with
    summary = train(config, tmp_path / "tuned", init_from=base_run, stop=stop)
    assert (summary.step, summary.reason) == (0, "stopped")
    base, state = load_checkpoint(base_run / "best.pt"), load_checkpoint(tmp_path / "tuned/last.pt")
    assert state["model"].keys() == base["model"].keys()
    assert all(torch.equal(state["model"][name], base["model"][name]) for name in base["model"])
    assert state["tokenizer"] == base["tokenizer"]
    assert state["optimizer"]["state"] == {}  # fresh: the base run's moments are not carried
    best_step = base["progress"]["step"]
    assert state["origin"]["checkpoint"] == str((base_run / "best.pt").resolve())
    assert state["origin"]["step"] == best_step
    saved = yaml.safe_load((tmp_path / "tuned" / "config.yaml").read_text(encoding="utf-8"))
    assert saved["tokenizer"] == to_plain(config_from_plain(base["config"]).tokenizer)
    assert saved["data"]["train"] == str(domain_b / "train")
    assert read_summary(tmp_path / "tuned").init_from.endswith(f"best.pt (step {best_step})")


def test_the_optimizer_schedule_and_step_count_start_afresh(base_run, domain_b, tmp_path):
    config = toy_config(domain_b, max_steps=3, validate_every=0, save_every=0)
    tuned, scratch = Recorder(), Recorder()
    train(config, tmp_path / "tuned", init_from=base_run / "last.pt", callbacks=[tuned])
    train(config, tmp_path / "scratch", callbacks=[scratch])
    assert [r.step for r in tuned.steps] == [1, 2, 3]
    assert [r.lr for r in tuned.steps] == [r.lr for r in scratch.steps]  # warm-up from 0 again
    assert tuned.steps[0].loss < scratch.steps[0].loss  # the trained weights know the task
    state = load_checkpoint(tmp_path / "tuned" / "last.pt")
    assert {int(s["step"]) for s in state["optimizer"]["state"].values()} == {3}
    assert tuned.info.init_from.endswith("last.pt (step 10)")


def test_another_model_is_refused_naming_the_key_and_both_values(base_run, domain_b, tmp_path):
    config = toy_config(domain_b)
    config.model.transformer.ff_size = 128
    with pytest.raises(ConfigError) as error:
        train(config_from_plain(to_plain(config)), tmp_path / "tuned", init_from=base_run)
    assert "model.transformer.ff_size: 64 in " in str(error.value)
    assert "best.pt, 128 in the config" in str(error.value)
    assert not (tmp_path / "tuned").exists()  # nothing created for a run that cannot start
    rnn = toy_config(domain_b, "rnn")
    with pytest.raises(ConfigError, match=r"model\.family: 'transformer' in .*, 'rnn' in the"):
        train(rnn, tmp_path / "rnn", init_from=base_run)


def test_dropout_may_change_and_the_unused_family_does_not_matter(base_run, domain_b, tmp_path):
    config = toy_config(domain_b, max_steps=1, validate_every=0)
    config.model.dropout = 0.3
    config.model.transformer.attention_dropout = 0.2
    config.model.rnn.hidden_size = 64  # the rnn part: not built by a transformer
    summary = train(config_from_plain(to_plain(config)), tmp_path / "tuned", init_from=base_run)
    assert summary.step == 1
    saved = yaml.safe_load((tmp_path / "tuned" / "config.yaml").read_text(encoding="utf-8"))
    assert saved["model"]["dropout"] == 0.3


def test_what_is_not_a_training_checkpoint_is_refused(domain_b, tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        train(toy_config(domain_b), tmp_path / "a", init_from=tmp_path / "missing.pt")
    torch.save({"model": {}}, tmp_path / "weights.pt")
    with pytest.raises(CheckpointError, match=r"cannot start a run from it: no config, tokenizer"):
        train(toy_config(domain_b), tmp_path / "b", init_from=tmp_path / "weights.pt")


def test_a_fine_tuning_run_resumes_exactly(base_run, domain_b, tmp_path):
    config = toy_config(domain_b, max_steps=12, save_every=4, validate_every=5)
    whole = Recorder()
    train(config, tmp_path / "whole", init_from=base_run, callbacks=[whole])
    stop = threading.Event()
    first = Recorder(stop, stop_at=7)
    train(config, tmp_path / "parts", init_from=base_run, callbacks=[first], stop=stop)
    second = Recorder()
    resumed = train(config, tmp_path / "parts", resume=True, callbacks=[second])  # no --init-from
    assert [r.loss for r in first.steps + second.steps] == [r.loss for r in whole.steps]
    expected, actual = weights(tmp_path / "whole" / "last.pt"), weights(resumed.last_checkpoint)
    assert all(torch.equal(expected[name], actual[name]) for name in expected)
    assert resumed.init_from == read_summary(tmp_path / "whole").init_from


def test_attn_train_init_from_on_the_command_line(base_run, domain_b, tmp_path):
    config_path = tmp_path / "tune.yaml"
    config_path.write_text(to_yaml(toy_config(domain_b, max_steps=2, validate_every=0)))
    command = [
        str(Path(sys.executable).parent / "attn-train"), str(config_path),
        "--run-dir", str(tmp_path / "tuned"), "--init-from", str(base_run),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    output = " ".join((result.stdout + result.stderr).split())
    assert "from step 0, the weights of " in output and "started from: " in output
    log = (tmp_path / "tuned" / "train.log").read_text(encoding="utf-8")
    assert "starting from the weights and tokenizer of " in log
    best_step = load_checkpoint(base_run / "best.pt")["progress"]["step"]
    assert read_summary(tmp_path / "tuned").init_from.endswith(f"best.pt (step {best_step})")


def test_sampling_settings_that_do_not_suit_the_models_tokenizer_stop_before_any_file(
    corpus, domain_b, tmp_path
):
    base = toy_config(corpus, max_steps=2, validate_every=0)
    base.tokenizer.type = "bpe"
    train(config_from_plain(to_plain(base)), tmp_path / "bpe-base")
    config = toy_config(domain_b)
    config.tokenizer.sampling.enabled, config.tokenizer.sampling.alpha = True, 1.5  # unigram: ok
    with pytest.raises(ConfigError, match=r"tokenizer\.sampling\.alpha.*tokenizer\.type 'bpe'"):
        train(
            config_from_plain(to_plain(config)), tmp_path / "tuned", init_from=tmp_path / "bpe-base"
        )
    assert not (tmp_path / "tuned").exists()
