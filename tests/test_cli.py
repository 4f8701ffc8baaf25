"""The CLI as a user runs it: a real fit + eval on the bundled data, and one-line errors with exit statuses."""

import csv
import json

import numpy as np
import pytest
from conftest import LUNG, run_cli


def test_fit_writes_the_run_directory(tiny_run):
    out, result = tiny_run
    assert f"run directory: {out}" in result.stdout
    for name in ("config.yaml", "train_log.csv", "model.keras", "metrics.json", "report.html", "predictions.csv"):
        assert (out / name).is_file(), name
    assert (out / "tensorboard").is_dir() and (out / "checkpoints" / "best.keras").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    for split in ("val", "test"):
        assert 0.0 <= metrics[split]["auroc"] <= 1.0 and 0.0 <= metrics[split]["accuracy"] <= 1.0
    assert metrics["test"]["n"] == 156 and metrics["best_epoch"] in (1, 2)
    with open(out / "train_log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["epoch"] for r in rows] == ["1", "2"] and "val_auroc" in rows[0]  # epochs count from 1 everywhere
    assert "class_names:\n  - malignant\n  - benign-or-normal" in (out / "config.yaml").read_text()
    assert "Traceback" not in result.stderr


def test_eval_matches_fit_and_sklearn(tiny_run, tmp_path):
    from sklearn.metrics import roc_auc_score

    run, _ = tiny_run
    result = run_cli("eval", run, "--out", tmp_path / "ev")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    fit_metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["auroc"] == pytest.approx(fit_metrics["test"]["auroc"], abs=1e-9)
    with open(tmp_path / "ev" / "predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 156 and set(rows[0]) == {"path", "p_malignant", "p_benign-or-normal", "predicted", "label"}
    y = np.array([r["label"] == "malignant" for r in rows])
    p = np.array([float(r["p_malignant"]) for r in rows])
    # the CSV rounds to 6 decimals: a 6-step model's near-equal probabilities can tie there, moving AUROC ~1e-4
    assert metrics["auroc"] == pytest.approx(roc_auc_score(y, p), abs=2e-3)
    html = (tmp_path / "ev" / "report.html").read_text()
    assert "At threshold 0.500" in html and "data:image/png;base64," in html
    assert (tmp_path / "ev" / "plots" / "roc.png").is_file()


def test_eval_on_the_model_file_with_tta_and_val_split(tiny_run, tmp_path):
    run, _ = tiny_run
    result = run_cli("eval", run / "model.keras", "--split", "val", "--tta", "--out", tmp_path / "ev")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["n"] == 78 and metrics["tta"] is True


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["fit", "--set", "train.epoch=1"], 2, "unknown config key 'train.epoch' (did you mean 'train.epochs'?)"),
        (["fit", "--set", "model.backbones=[resnet5]"], 2, "unknown backbone 'resnet5'"),
        (["fit", "nosuchconfig"], 2, "unknown config 'nosuchconfig'"),
        (["fit", "--set", "data.source=/no/such/dir"], 1, "/no/such/dir: data source not found"),
        # combinations that failed mid-run, after reading every file, now refused before any work
        (["fit", "--set", "data.window=[lung,bone]"], 2, "'data.window' gives 2 windows"),
        (["fit", "--set", "train.monitor=val_los"], 2, "'train.monitor': unknown value 'val_los' (did you mean 'val_loss'"),
        (["fit", "--set", "model.backbones=[vgg19_bn]", "--set", "train.size_schedule=[[1, 16], [2, 28]]"], 2,
         "backbone 'vgg19_bn' takes one input size only"),
        (["eval", "/no/such/run"], 2, "does not exist"),
        (["frobnicate"], 2, "No such command"),
    ],
)
def test_errors_are_one_line_with_exit_status(args, code, message):
    result = run_cli(*args)
    assert result.returncode == code, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("medkeras: error: ") and message in lines[-1]
    assert "Traceback" not in result.stderr and "in user code" not in result.stderr


def test_unreadable_model_file(tmp_path):
    bad = tmp_path / "model.keras"
    bad.write_text("not a zip")
    result = run_cli("eval", bad)
    assert result.returncode == 1 and "model.keras" in result.stderr and "Traceback" not in result.stderr


def test_listings():
    result = run_cli("backbones")
    assert result.returncode == 0 and "resnet18_small" in result.stdout and "efficientnetb0" in result.stdout
    result = run_cli("configs")
    assert result.returncode == 0
    assert any(line.startswith("demo ") and "BreastMNIST" in line for line in result.stdout.splitlines())


@pytest.mark.slow
def test_backbones_with_parameter_counts():
    result = run_cli("backbones", "--params")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert "21.8M" in rows["resnet34"] and "25.6M" in rows["resnet50"] and "143.7M" in rows["vgg19_bn"]


def test_every_command_helps_with_an_example():
    commands = ["fit", "prepare", "eval", "export", "predict", "gradcam", "backbones", "configs", "config"]
    for command in commands:
        result = run_cli(command, "--help")
        assert result.returncode == 0, command
        examples = result.stdout.split("Examples:", 1)
        assert len(examples) == 2 and (f"medkeras {command}" in examples[1] or "medkeras fit" in examples[1]), command


def test_kill_9_at_a_random_moment_never_leaves_a_half_written_output():
    """A seeded sample of `bench.kills` (which runs 10 per command): fit, prepare, export and cv killed at a random
    moment leave only whole files in place, and running them again (fit/cv --resume) finishes with whole outputs."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("kills", Path(__file__).resolve().parents[1] / "bench" / "kills.py")
    kills = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kills)
    result = kills.run(kills=1, seed=5, save_as=None)
    assert result["landed"] >= 2, result  # the kills landed while the commands ran
    for case in result["cases"]:
        assert case["ok"], case


def test_a_run_works_from_any_directory(ct_run, tmp_path):
    """`ct_run` was fitted beside its manifest, named relatively (`data.source=ct.csv`), and exported from another
    folder (the export reads the run's validation data); eval and predict run from a third."""
    import yaml

    run, export = ct_run
    source = yaml.safe_load((run / "config.yaml").read_text())["data"]["source"]
    assert source == str(run.parent / "ct.csv")  # recorded where it is, not as typed
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = run_cli("eval", run, "--out", tmp_path / "ev", cwd=elsewhere)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["n"] == 3
    result = run_cli("predict", run / "model.keras", "--out", "scored.csv", LUNG / "1-13.dcm", cwd=elsewhere)
    assert result.returncode == 0 and (elsewhere / "scored.csv").is_file(), result.stderr[-2000:]


def test_resume_takes_the_command_that_started_the_run_and_refuses_a_change(tiny_run):
    """`fit --resume` with the `--set`s the run was started with (the same command run again) continues it; a
    `--set` that would change its config is a usage error naming the key and both values."""
    out, _ = tiny_run
    same = run_cli("fit", "--out", out, "--resume", "--set", "train.epochs=2", "--set", "train.steps_per_epoch=3",
                   "--set", "train.run_eagerly=true", "--set", "train.verbose=0")
    assert same.returncode == 0 and "nothing to resume" in same.stdout, same.stderr
    other = run_cli("fit", "--out", out, "--resume", "--set", "train.steps_per_epoch=4")
    assert other.returncode == 2 and "not train.steps_per_epoch (the run has 3, --set asks 4)" in other.stderr
