"""Typed configuration: one dataclass per section of the YAML config, loaded and validated once.

:mod:`~seq2seq_attn.config.sections` and :mod:`~seq2seq_attn.config.model` declare the sections;
:mod:`~seq2seq_attn.config.loader` reads YAML, applies ``--set section.key=value`` overrides and
turns plain mappings into those dataclasses, raising :class:`ConfigError` naming the key, the
value and the fix. The names below are the package's API.
"""

from .loader import (
    ConfigError,
    apply_overrides,
    first_difference,
    from_mapping,
    read_yaml,
    require,
    to_plain,
    to_yaml,
)
from .model import ModelConfig, RNNConfig, TransformerConfig
from .sections import (
    CleanConfig,
    Config,
    DataConfig,
    DecodeConfig,
    SubwordSamplingConfig,
    TokenizerConfig,
    TrainConfig,
    config_from_plain,
    load_config,
)

__all__ = [
    "CleanConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "DecodeConfig",
    "ModelConfig",
    "RNNConfig",
    "SubwordSamplingConfig",
    "TokenizerConfig",
    "TrainConfig",
    "TransformerConfig",
    "apply_overrides",
    "config_from_plain",
    "first_difference",
    "from_mapping",
    "load_config",
    "read_yaml",
    "require",
    "to_plain",
    "to_yaml",
]
