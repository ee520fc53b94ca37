"""Config loading: every bad key, type or value is an error naming it and the fix."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from seq2seq_attn.config import (
    Config,
    ConfigError,
    DecodeConfig,
    ModelConfig,
    TrainConfig,
    apply_overrides,
    config_from_plain,
    from_mapping,
    load_config,
    read_yaml,
    to_plain,
    to_yaml,
)


@dataclass
class Outer:
    """A nested section, to check dotted paths in messages."""

    name: str = "run"
    train: TrainConfig = field(default_factory=TrainConfig)


def test_values_are_typed_and_defaults_kept():
    train = from_mapping(TrainConfig, {"lr": 1, "betas": [0.9, 0.99], "max_steps": None}, "train")
    assert train.lr == 1.0 and isinstance(train.lr, float)
    assert train.betas == (0.9, 0.99)
    assert train.max_steps is None
    assert train.schedule == TrainConfig().schedule


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"warmup_step": 10}, "train.warmup_step: unknown key; did you mean 'train.warmup_steps'?"),
        ({"lr": "fast"}, "train.lr: expected a number, got 'fast'"),
        ({"max_steps": True}, "train.max_steps: expected a whole number, got True"),
        ({"validate_every": 1.5}, "train.validate_every: expected a whole number, got 1.5"),
        (
            {"schedule": "inverse-sqrt"},
            "train.schedule: invalid value 'inverse-sqrt' (did you mean",
        ),
        ({"betas": [0.9]}, "train.betas: expected a list of 2 values, got [0.9]"),
        ({"betas": 0.9}, "train.betas: expected a list, got 0.9"),
        ({"lr": -1}, "train.lr: invalid value -1.0; use a positive learning rate"),
        ({"accumulate_steps": 0}, "train.accumulate_steps: invalid value 0"),
        ({"label_smoothing": 1.0}, "train.label_smoothing: invalid value 1.0"),
    ],
)
def test_bad_train_values_name_the_key(values, message):
    with pytest.raises(ConfigError) as error:
        from_mapping(TrainConfig, values, "train")
    assert message in str(error.value)


def test_decode_limits_are_checked():
    with pytest.raises(ConfigError, match=r"decode\.max_length: invalid value 3; it must exceed"):
        from_mapping(DecodeConfig, {"min_length": 5, "max_length": 3}, "decode")
    with pytest.raises(ConfigError, match=r"decode\.beam_size"):
        from_mapping(DecodeConfig, {"beam_size": 0}, "decode")


def test_nested_sections_report_full_paths():
    with pytest.raises(ConfigError, match=r"^outer\.train\.lr: expected a number"):
        from_mapping(Outer, {"train": {"lr": [1]}}, "outer")
    with pytest.raises(ConfigError, match=r"^outer\.train: expected a mapping"):
        from_mapping(Outer, {"train": 3}, "outer")


def test_overrides_set_nested_values_parsed_as_yaml():
    raw = {"train": {"lr": 0.1}}
    result = apply_overrides(raw, ["train.lr=2e-3", "train.betas=[0.8, 0.9]", "decode.beam_size=4"])
    assert result == {
        "train": {"lr": 2e-3, "betas": [0.8, 0.9]},
        "decode": {"beam_size": 4},
    }
    assert raw == {"train": {"lr": 0.1}}  # the input is left alone
    with pytest.raises(ConfigError, match=r"expected section\.key=value"):
        apply_overrides(raw, ["train.lr"])
    with pytest.raises(ConfigError, match="'lr' holds a value, not a section"):
        apply_overrides(raw, ["train.lr.x=1"])


def test_read_yaml_errors_name_file_and_line(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("train:\n  lr: 0.1\n  betas: [0.9, 0.98\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"broken\.yaml:line \d+, column \d+: invalid YAML"):
        read_yaml(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="expected a mapping of sections"):
        read_yaml(listing)
    with pytest.raises(ConfigError, match=r"missing\.yaml: config file not found"):
        read_yaml(tmp_path / "missing.yaml")


def test_yaml_round_trip(tmp_path):
    original = Outer(name="x", train=TrainConfig(lr=0.01, betas=(0.8, 0.9), max_minutes=5.0))
    path = tmp_path / "config.yaml"
    path.write_text(to_yaml(original), encoding="utf-8")
    assert from_mapping(Outer, read_yaml(path), "outer") == original


def test_yaml_exponent_floats_are_numbers(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("train:\n  lr: 5e-4\n  warmup_steps: 10\n  max_minutes: 1.5E+1\n")
    train = from_mapping(TrainConfig, read_yaml(path)["train"], "train")
    assert (train.lr, train.warmup_steps, train.max_minutes) == (5e-4, 10, 15.0)
    assert isinstance(train.warmup_steps, int)


def write(path, text: str):
    """Write ``text`` to ``path`` and return the path."""
    path.write_text(text, encoding="utf-8")
    return path


def test_load_config_reads_sections_and_applies_overrides(tmp_path):
    path = write(
        tmp_path / "run.yaml",
        "data:\n  src_lang: fr\n  max_length: 50\nmodel:\n  family: rnn\n"
        "  rnn:\n    hidden_size: 64\ntrain:\n  lr: 1e-3\ndecode:\n",
    )
    config = load_config(path, ["train.max_steps=20", "decode.beam_size=2"])
    assert (config.data.src_lang, config.data.max_length) == ("fr", 50)
    assert (config.model.family, config.model.rnn.hidden_size) == ("rnn", 64)
    assert (config.train.lr, config.train.max_steps) == (1e-3, 20)
    assert config.decode == DecodeConfig(beam_size=2)  # an empty section keeps the defaults
    assert config.tokenizer == Config().tokenizer


def test_load_config_names_unknown_sections_and_keys(tmp_path):
    path = write(tmp_path / "bad.yaml", "trian:\n  lr: 0.1\n")
    with pytest.raises(
        ConfigError, match=r"bad\.yaml: unknown section 'trian'; did you mean 'train'"
    ):
        load_config(path)
    path = write(tmp_path / "good.yaml", "train:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"^model\.transformer\.d_modle: unknown key; did you"):
        load_config(path, ["model.transformer.d_modle=64"])
    with pytest.raises(ConfigError, match=r"^decode\.beam_size: expected a whole number"):
        load_config(path, ["decode.beam_size=wide"])


def test_decode_n_best_is_read_and_bounded_by_the_beam(tmp_path):
    assert DecodeConfig().n_best == 1
    path = write(tmp_path / "run.yaml", "decode:\n  beam_size: 4\n  n_best: 3\n")
    assert load_config(path).decode.n_best == 3
    assert load_config(path, ["decode.n_best=2"]).decode.n_best == 2
    assert load_config(path, ["decode.n_best=4"]).decode == DecodeConfig(beam_size=4, n_best=4)
    with pytest.raises(
        ConfigError, match=r"^decode\.n_best: invalid value 5; use 1 \.\. decode\.beam_size \(4\)$"
    ):
        load_config(path, ["decode.n_best=5"])
    with pytest.raises(ConfigError, match=r"^decode\.n_best: invalid value 3; .*beam_size \(2\)"):
        load_config(path, ["decode.beam_size=2"])  # a narrower beam than the n-best asked for
    with pytest.raises(ConfigError, match=r"^decode\.n_best: invalid value 0; use 1 \.\."):
        from_mapping(DecodeConfig, {"n_best": 0}, "decode")
    with pytest.raises(ConfigError, match=r"^decode\.n_best: expected a whole number, got 'two'"):
        load_config(path, ["decode.n_best=two"])


def test_cross_section_limits_are_checked():
    with pytest.raises(ConfigError, match=r"^model\.max_positions: invalid value 50; .*100"):
        config_from_plain({"model": {"max_positions": 50}})
    config_from_plain({"model": {"family": "rnn", "max_positions": 50}})  # an RNN has no limit


def test_whole_config_round_trips_through_plain_data_and_yaml(tmp_path):
    config = Config(model=ModelConfig(family="rnn"), train=TrainConfig(betas=(0.8, 0.9)))
    assert config_from_plain(to_plain(config)) == config
    path = write(tmp_path / "resolved.yaml", to_yaml(config))
    assert load_config(path) == config


CONFIGS = sorted((Path(__file__).resolve().parents[1] / "data" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_shipped_configs_load(path):
    config = load_config(path)
    family = "rnn" if "rnn" in path.name else "transformer"
    assert config.model.family == family
    assert config.train.max_steps or config.train.max_epochs or config.train.max_minutes


def test_the_promised_configs_are_shipped():
    assert {path.name for path in CONFIGS} >= {
        "multi30k-transformer.yaml", "multi30k-rnn-bahdanau.yaml",
        "multi30k-rnn-luong.yaml", "toy-transformer.yaml", "toy-rnn.yaml",
    }  # fmt: skip


@pytest.mark.parametrize(
    "path", [p for p in CONFIGS if p.name.startswith("multi30k-")], ids=lambda path: path.name
)
def test_multi30k_configs_budget_steps_not_minutes(path):
    """The benchmark's figures must not depend on the machine's speed: a step budget ends each
    run, and the time limit (a guard) leaves room for a machine twice as slow as ours."""
    train = load_config(path).train
    assert train.max_steps is not None
    assert train.max_minutes is None or train.max_minutes >= 50
