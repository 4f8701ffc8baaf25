import pytest
import yaml

from medkeras.config import (
    Config,
    bundled_configs,
    from_dict,
    load_config,
    parse_override,
)
from medkeras.errors import ConfigError


def test_defaults_are_a_valid_config():
    cfg = Config()
    assert cfg.data.source == "breastmnist"
    assert cfg.train.epochs >= 1


def test_demo_is_bundled_and_loads():
    assert "demo" in bundled_configs()
    cfg = load_config("demo")
    assert cfg.name == "demo"
    assert cfg.data.source == "breastmnist"
    assert len(cfg.model.backbones) >= 2
    assert cfg.model.weights == "none"


def test_overrides_are_read_as_yaml_and_typed():
    cfg = load_config(
        "demo",
        ["train.epochs=3", "train.learning_rate=1e-3", "model.backbones=[cnn8_small]", "data.window=lung",
         "train.jit_compile=true", "data.augment.rotation=0"],
    )
    assert cfg.train.epochs == 3 and isinstance(cfg.train.epochs, int)
    assert cfg.train.learning_rate == pytest.approx(1e-3) and isinstance(cfg.train.learning_rate, float)
    assert cfg.model.backbones == ["cnn8_small"]
    assert cfg.data.window == [[-600.0, 1500.0]]  # resolved once, here, into the form every module uses
    assert cfg.train.jit_compile is True
    assert cfg.data.augment.rotation == 0.0


def test_a_folder_is_never_taken_for_a_config(tmp_path, monkeypatch):
    """`medkeras fit --out demo` makes a folder named like the bundled config; `fit` (demo) still finds the bundled
    one, and a folder named otherwise is refused as a folder, not as a missing file."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()
    (tmp_path / "runs").mkdir()
    assert load_config("demo").name == "demo"
    with pytest.raises(ConfigError, match="runs: is a folder, not a config file"):
        load_config("runs")


def test_a_recipes_weights_follow_the_backbones_a_user_keeps():
    """`--set model.backbones=...` on a recipe with weights per backbone keeps the weights of the backbones left
    (a new one starts from none); weights the user names themselves still have to name model.backbones."""
    cfg = load_config("lung-ct-ensemble", ["model.backbones=[efficientnetb0, cnn8_small]"])
    assert cfg.model.weights == {"efficientnetb0": "imagenet"}
    from medkeras.models.ensemble import weights_for

    assert weights_for(cfg.model.weights, "cnn8_small") == "none"
    with pytest.raises(ConfigError, match="names \\['vgg19_bn'\\], not among model.backbones"):
        load_config("lung-ct-ensemble", ["model.backbones=[cnn8_small]", "model.weights={vgg19_bn: none}"])


@pytest.mark.parametrize(
    "override, hint",
    [("train.epoch=3", "train.epochs"), ("data.imagesize=64", "data.image_size"), ("modle.backbones=[x]", "model")],
)
def test_unknown_key_names_the_closest_valid_key(override, hint):
    with pytest.raises(ConfigError, match=f"did you mean '{hint}"):
        load_config("demo", [override])


def test_wrong_type_and_bad_values_are_config_errors():
    with pytest.raises(ConfigError, match="train.epochs"):
        load_config("demo", ["train.epochs=many"])
    with pytest.raises(ConfigError, match="unknown backbone 'resnet5'.*resnet50"):
        load_config("demo", ["model.backbones=[resnet5]"])
    with pytest.raises(ConfigError, match="data.split"):
        load_config("demo", ["data.split=[0.5, 0.5, 0.5]"])
    with pytest.raises(ConfigError, match="unknown window"):
        load_config("demo", ["data.window=lungs"])
    with pytest.raises(ConfigError, match="train.steps_per_execution"):
        load_config("demo", ["train.steps_per_execution=0"])
    with pytest.raises(ConfigError, match=r"data.augment.blur_sigma' must be in \[0, 1\], got 3.0"):
        load_config("demo", ["data.augment.blur=0.5", "data.augment.blur_sigma=3"])  # Keras' bound, named before any read
    with pytest.raises(ConfigError, match=r"data.augment.clahe' must be in \[0, 1\]"):
        load_config("demo", ["data.augment.clahe=2"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("train.epochs")
    assert issubclass(ConfigError, Exception) and ConfigError.exit_code == 2


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = load_config("demo", ["train.epochs=7", "data.window=[[-600, 1500], mediastinum, bone]"])
    cfg.save(tmp_path / "config.yaml")
    again = from_dict(yaml.safe_load((tmp_path / "config.yaml").read_text()))
    assert again == cfg


def test_yaml_file_and_missing_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("model:\n  backbones: [resnet18_small]\ntrain:\n  epochs: 4\n")
    cfg = load_config(str(path))
    assert cfg.name == "mine" and cfg.train.epochs == 4 and cfg.model.backbones == ["resnet18_small"]
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "absent.yaml"))
    path.write_text("trian:\n  epochs: 4\n")
    with pytest.raises(ConfigError, match="did you mean 'train'"):
        load_config(str(path))


def test_every_key_is_listed_with_its_meaning_and_the_readme_table_is_that_list():
    from pathlib import Path

    from medkeras.config.keys import describe_keys, keys_markdown

    rows = describe_keys()
    assert len(rows) > 70 and all(meaning for _, _, _, meaning in rows)
    assert ("train.epochs", "int", "10", "epochs in all (both phases of two-phase training)") in rows
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    generated = readme.split("tests/test_config.py checks it -->\n", 1)[1].split("<!-- /config-keys -->", 1)[0]
    assert generated == keys_markdown(), "README's key table is stale: paste `medkeras config --markdown`"


def test_a_yaml_syntax_error_names_line_and_column(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("train:\n  epochs: 3\nmodel:\n  backbones: [resnet18_small, cnn8_small\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml:5:1: not valid YAML: expected ',' or '\]'"):
        load_config(str(path))


def test_a_recipe_on_other_data_is_named_after_the_data():
    cfg = load_config("demo", ["data.source=/data/ct/manifest.csv"])
    assert cfg.name == "demo-manifest" and "BreastMNIST" not in cfg.description
