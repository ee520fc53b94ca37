"""Config loading: every bad key, type or value is an error naming it and the fix."""

from __future__ import annotations

import dataclasses
import datetime
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from seq2seq_attn.config import (
    CleanConfig,
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


def float_keys(cls: type, prefix: str) -> list[tuple[str, bool]]:
    """``(dotted key, holds a tuple)`` of every float a config section holds, nested sections,
    optional floats and tuples of floats included."""
    found = []
    for name, hint in typing.get_type_hints(cls).items():
        key, args = f"{prefix}.{name}", typing.get_args(hint)
        if dataclasses.is_dataclass(hint):
            found += float_keys(hint, key)
        elif hint is float or float in args:
            found.append((key, typing.get_origin(hint) is tuple))
    return found


CONFIG_FLOAT_KEYS = [
    item
    for section, hint in typing.get_type_hints(Config).items()
    for item in float_keys(hint, section)
]


def test_every_float_of_the_config_is_found():
    keys = {key for key, _ in CONFIG_FLOAT_KEYS}
    assert {"train.lr", "train.betas", "train.weight_decay", "train.clip_grad_norm",
            "train.ddp_timeout_minutes", "decode.max_length_ratio", "model.dropout",
            "data.clean.max_length_ratio", "tokenizer.sampling.alpha"} <= keys  # fmt: skip


@pytest.mark.parametrize(("key", "in_tuple"), CONFIG_FLOAT_KEYS, ids=lambda item: str(item))
@pytest.mark.parametrize("text", [".nan", ".inf", "-.inf", "1e999"])
def test_no_config_float_may_be_nan_or_infinite(key, in_tuple, text):
    value = f"[0.9, {text}]" if in_tuple else text
    shown = {".nan": "nan", ".inf": "inf", "-.inf": "-inf", "1e999": "inf"}[text]
    with pytest.raises(ConfigError) as error:
        config_from_plain(apply_overrides({}, [f"{key}={value}"]))
    assert str(error.value).startswith(f"{key}: invalid value {shown}; use a finite number")


def test_inf_on_the_command_line_is_refused_in_every_spelling(tmp_path):
    path = write(tmp_path / "run.yaml", "train:\n  lr: 1e-3\n")
    with pytest.raises(ConfigError, match=r"^train\.lr: expected a number, got 'inf'$"):
        load_config(path, ["train.lr=inf"])  # YAML reads a bare inf as a string
    with pytest.raises(ConfigError, match=r"^train\.lr: invalid value inf; use a finite number"):
        load_config(path, ["train.lr=.inf"])
    with pytest.raises(ConfigError, match=r"^train\.lr: invalid value \(an int beyond 1\.8e308\)"):
        load_config(path, ["train.lr=" + "9" * 400])
    with pytest.raises(ConfigError, match=r"^--set 'train\.seed=9+': invalid value: Exceeds"):
        load_config(path, ["train.seed=" + "9" * 5000])
    dates = write(tmp_path / "dates.yaml", "train:\n  lr: 2020-13-45\n")
    with pytest.raises(ConfigError, match=r"dates\.yaml: invalid value: month must be in 1\.\.12"):
        load_config(dates)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"weight_decay": -1}, "train.weight_decay: invalid value -1.0; use 0 (none) or a pos"),
        ({"weight_decay": 2000}, "train.weight_decay: invalid value 2000.0; with adamw each step"),
        ({"ddp_timeout_minutes": 10081}, "train.ddp_timeout_minutes: invalid value 10081.0; use"),
        ({"seed": -1}, "train.seed: invalid value -1; use a whole number in [0, 4294967295]"),
        ({"seed": 2**32}, "train.seed: invalid value 4294967296; use a whole number in [0, 42"),
    ],
)
def test_train_ranges_the_optimizer_and_torch_need(values, message):
    with pytest.raises(ConfigError) as error:
        from_mapping(TrainConfig, values, "train")
    assert str(error.value).startswith(message)


def test_train_ranges_accept_their_limits():
    train = from_mapping(TrainConfig, {"weight_decay": 1999, "ddp_timeout_minutes": 10080}, "train")
    assert datetime.timedelta(minutes=train.ddp_timeout_minutes).days == 7
    adam = {"optimizer": "adam", "weight_decay": 2000, "seed": 2**32 - 1}  # L2 in the gradient
    assert from_mapping(TrainConfig, adam, "train").weight_decay == 2000.0


def test_decode_and_tokenizer_ranges():
    with pytest.raises(ConfigError, match=r"^decode\.max_length_offset: invalid value -1; "):
        from_mapping(DecodeConfig, {"max_length_offset": -1}, "decode")
    with pytest.raises(ConfigError, match=r"^tokenizer\.seed: invalid value 4294967296; use"):
        config_from_plain({"tokenizer": {"seed": 2**32}})
    model_decode = DecodeConfig()  # what translation settings override, past the YAML loader
    for key in ("max_length_ratio", "length_penalty"):
        with pytest.raises(ConfigError, match=rf"^decode\.{key}: invalid value inf; .*finite"):
            dataclasses.replace(model_decode, **{key: math.inf})
    with pytest.raises(ConfigError, match=r"^data\.clean\.max_length_ratio: invalid value inf"):
        CleanConfig(max_length_ratio=math.inf)
    with pytest.raises(ConfigError, match=r"^train\.lr: invalid value inf; use a positive"):
        TrainConfig(lr=math.inf)
