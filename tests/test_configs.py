"""Every bundled config loads and is listed. Each recipe is driven whole (fit, eval, export, predict, every
signature) by tests/test_recipes.py."""

from conftest import run_cli

from medkeras.config import bundled_configs, load_config


def test_every_bundled_config_loads_and_is_listed():
    names = set(bundled_configs())
    assert {"demo", "lung-ct-ensemble", "cancer-resnet34-frozen", "spine-xray-ensemble", "cxr-5class"} <= names
    for name in names:
        cfg = load_config(name)
        assert cfg.description, name
    listing = run_cli("configs").stdout
    assert all(name in listing for name in names)
