"""One typed config for a run: dataclasses with defaults (`schema.py`), loaded from YAML and `--set` overrides
(`load.py`), validated (`checks.py`). The fully resolved config is saved with every run and model.
"""

from medkeras.config.checks import validate
from medkeras.config.load import (
    CONFIG_DIR,
    bundled_configs,
    from_dict,
    load_config,
    parse_override,
    resolve_config_path,
    resolve_paths,
    set_key,
)
from medkeras.config.schema import (
    AugmentConfig,
    Config,
    DataConfig,
    EvalConfig,
    ExportConfig,
    ModelConfig,
    TrackConfig,
    TrainConfig,
)
from medkeras.errors import ConfigError

__all__ = [
    "CONFIG_DIR",
    "AugmentConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "ExportConfig",
    "ModelConfig",
    "TrackConfig",
    "TrainConfig",
    "bundled_configs",
    "from_dict",
    "load_config",
    "parse_override",
    "resolve_config_path",
    "resolve_paths",
    "set_key",
    "validate",
]
