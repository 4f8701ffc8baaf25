"""One typed config for a run: dataclasses with defaults (`schema.py`), values and overrides checked against their
types (`values.py`), loaded from YAML (`load.py`), validated (`checks.py`: each section's checks beside its layer).
The fully resolved config is saved with every run and model.

The schema and its values load first and import no layer, so every layer may use them; `load_config` and
`validate` (which read the layers' registries) load on first use.
"""

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
from medkeras.config.values import STUDY_INPUTS, from_dict, is_study, one_of, parse_override, plane_size, set_key
from medkeras.errors import ConfigError
from medkeras.utils import lazy_getattr

_LAZY = {
    "validate": "medkeras.config.checks",
    "CONFIG_DIR": "medkeras.config.load",
    "bundled_configs": "medkeras.config.load",
    "load_config": "medkeras.config.load",
    "resolve_config_path": "medkeras.config.load",
    "resolve_paths": "medkeras.config.load",
}
__getattr__ = lazy_getattr(__name__, _LAZY)

__all__ = [
    "AugmentConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "ExportConfig",
    "ModelConfig",
    "STUDY_INPUTS",
    "TrackConfig",
    "TrainConfig",
    "from_dict",
    "is_study",
    "one_of",
    "parse_override",
    "plane_size",
    "set_key",
    *sorted(_LAZY),
]
