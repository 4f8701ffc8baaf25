"""Configs from YAML files and bundled names, with `--set key=value` overrides read as YAML.

Unknown keys are errors that name the closest valid key, so a typo never silently trains the wrong model; the
result is validated (`checks.py`) before anything uses it.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import yaml

from medkeras.config.checks import validate
from medkeras.config.schema import Config
from medkeras.config.values import _apply, parse_override, set_key
from medkeras.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def bundled_configs() -> dict[str, Path]:
    """Name -> path of every YAML in `configs/`."""
    return {p.stem: p for p in sorted(CONFIG_DIR.glob("*.yaml"))}


def resolve_config_path(name_or_path) -> Path:
    path = Path(name_or_path)
    bundled = bundled_configs()
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        return path
    if path.is_dir() and str(name_or_path) not in bundled:  # a folder is never a config (`fit --out demo` makes one)
        raise ConfigError(f"{path}: is a folder, not a config file (give a YAML file or a bundled config name)")
    if str(name_or_path) in bundled:
        return bundled[str(name_or_path)]
    close = difflib.get_close_matches(str(name_or_path), list(bundled), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else f" (bundled: {', '.join(bundled)})"
    raise ConfigError(f"unknown config '{name_or_path}'{hint}")


def load_config(name_or_path="demo", overrides=()) -> Config:
    """Load a bundled config by name or a YAML file, then apply `overrides` ("key=value" strings or pairs).

    >>> cfg = load_config("demo", ["train.epochs=1"])
    >>> cfg.train.epochs
    1
    """
    cfg = Config()
    if name_or_path is not None:
        path = resolve_config_path(name_or_path)
        values = read_yaml(path)
        _apply(cfg, values)
        if "name" not in values:
            cfg.name = path.stem
    source = cfg.data.source
    for item in overrides:
        key, value = parse_override(item) if isinstance(item, str) else item
        set_key(cfg, key, value)
    if cfg.data.source != source and not any(str(k).startswith("name") for k in _keys(overrides)):
        # the recipe on other data: named after the data, not described as the recipe's own data
        cfg.description = f"the {cfg.name} recipe on {cfg.data.source}"
        cfg.name = f"{cfg.name}-{Path(str(cfg.data.source)).stem or 'data'}"
    keys = set(map(str, _keys(overrides)))
    if "model.backbones" in keys and "model.weights" not in keys and isinstance(cfg.model.weights, dict):
        # the recipe's weights per backbone follow the backbones the user keeps (others: its default, or none)
        kept = set(cfg.model.backbones) | {"default"}
        cfg.model.weights = {k: v for k, v in cfg.model.weights.items() if str(k) in kept}
    validate(cfg)
    resolve_paths(cfg)
    return cfg


def _absolute(value):
    """An existing file or folder named relative to the working directory, as an absolute path; else as given."""
    path = Path(str(value)).expanduser()
    return str(path.resolve()) if path.exists() else value


def resolve_paths(cfg: Config) -> None:
    """The keys that name files, made absolute where they exist (`data.source` unless a bundled name,
    `data.patient_key_file`, each `model.weights` file), so the config a run saves works from any working
    directory: `eval`, `export`, `predict` and `cv --resume` of the run find its data and weights."""
    from medkeras.data.sources import BUNDLED

    if str(cfg.data.source) not in BUNDLED:
        cfg.data.source = _absolute(cfg.data.source)
    if cfg.data.patient_key_file:
        cfg.data.patient_key_file = _absolute(cfg.data.patient_key_file)
    keywords = ("imagenet", "none")
    if isinstance(cfg.model.weights, dict):
        cfg.model.weights = {k: v if str(v).lower() in keywords else _absolute(v) for k, v in cfg.model.weights.items()}
    elif str(cfg.model.weights).lower() not in keywords:
        cfg.model.weights = _absolute(cfg.model.weights)


def _keys(overrides) -> list:
    return [(parse_override(o)[0] if isinstance(o, str) else o[0]) for o in overrides]


def read_yaml(path) -> dict:
    """A YAML file's mapping; a syntax error names the file, line and column."""
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{where}: not valid YAML: {problem}") from exc
    if values is not None and not isinstance(values, dict):
        raise ConfigError(f"{path}: a config is a mapping of sections (data:, model:, train:, ...), got "
                          f"{type(values).__name__}")
    return values or {}
