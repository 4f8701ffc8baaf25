"""Evaluation: intervals, operating points, calibration, Grad-CAM, and the report on the bundled data."""

import json
import shutil

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image

from medkeras.config import EvalConfig
from medkeras.errors import ConfigError
from medkeras.evaluation.calibration import (
    brier_score,
    expected_calibration_error,
    fit_temperature,
    maximum_calibration_error,
    nll,
)
from medkeras.evaluation.intervals import bootstrap_intervals
from medkeras.evaluation.metrics import softmax
from medkeras.evaluation.thresholds import choose_threshold, parse_rule


def _predictions(n, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    logits = rng.normal(size=(n, 2)) + 1.2 * np.eye(2)[labels]
    return labels, softmax(logits)


def test_intervals_contain_the_estimate_and_narrow_with_n():
    widths = []
    for n in (100, 1600):
        labels, probs = _predictions(n)
        ci = bootstrap_intervals(labels, probs, ["a", "b"], n=300, seed=0)
        for key in ("auroc", "accuracy", "sensitivity", "specificity", "f1"):
            assert ci[key]["lower"] <= ci[key]["value"] <= ci[key]["upper"], key
        widths.append(ci["auroc"]["upper"] - ci["auroc"]["lower"])
    assert widths[1] < widths[0] / 2.5  # ~ 1/sqrt(16) = 1/4 of the width at 16x the data


def test_intervals_are_seeded():
    labels, probs = _predictions(200)
    a = bootstrap_intervals(labels, probs, ["a", "b"], n=100, seed=3)
    b = bootstrap_intervals(labels, probs, ["a", "b"], n=100, seed=3)
    assert a == b


def test_threshold_rules_on_constructed_cases():
    positive = np.array([0, 0, 0, 0, 1, 0, 1, 1, 1, 1], bool)
    scores = np.array([0.05, 0.1, 0.2, 0.3, 0.35, 0.4, 0.6, 0.7, 0.8, 0.9])
    assert choose_threshold("0.42", positive, scores) == 0.42
    # Each rule picks a validation score s, then the threshold goes halfway down to the next lower score: the same
    # validation labels (p >= t), no case on the operating point.
    # Youden: at 0.6 sens 4/5, spec 5/5 -> J 0.8; at 0.35 sens 1, spec 4/5 -> J 0.8; argmax takes the first (higher t)
    assert choose_threshold("youden", positive, scores) == pytest.approx((0.6 + 0.4) / 2)
    # F1: at 0.35 -> tp 5, fp 1 -> F1 10/11 = 0.909 (best); at 0.6 -> tp 4 fp 0 fn 1 -> 8/9
    assert choose_threshold("f1", positive, scores) == pytest.approx((0.35 + 0.3) / 2)
    # the highest threshold keeping sensitivity >= 0.95 must catch all five positives
    assert choose_threshold("sensitivity@0.95", positive, scores) == pytest.approx((0.35 + 0.3) / 2)
    # the lowest threshold keeping specificity >= 0.8 (4 of 5 negatives below it)
    assert choose_threshold("specificity@0.8", positive, scores) == pytest.approx((0.35 + 0.3) / 2)
    assert choose_threshold("specificity@1.0", positive, scores) == pytest.approx(0.5)
    for rule in ("youden", "f1", "sensitivity@0.95", "specificity@0.8"):  # validation labelled as at the score
        t = choose_threshold(rule, positive, scores)
        assert not np.isin(t, scores) and ((scores >= t) == (scores >= scores[scores >= t].min())).all()
    lowest = np.array([True, False, True, True])  # the lowest score is a positive: below every score, halfway to 0
    assert choose_threshold("sensitivity@1.0", lowest, np.array([0.2, 0.3, 0.5, 0.6])) == pytest.approx(0.1)
    assert parse_rule("sensitivity@0.9") == ("sensitivity", 0.9)

    with pytest.raises(ConfigError, match="unknown threshold rule"):
        parse_rule("sensitivity@high")
    with pytest.raises(ConfigError, match="both classes"):
        choose_threshold("youden", np.ones(4, bool), scores[:4])


def test_ece_mce_brier_exact_on_a_constructed_example():
    # four images, confidences 0.9 (2 right of 2), 0.6 (1 right of 2); 15 bins put 0.9 and 0.6 in separate bins
    probs = np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [0.4, 0.6]])
    labels = np.array([0, 1, 0, 0])
    # bin(0.9): acc 1.0, conf 0.9 -> gap 0.1; bin(0.6): acc 0.5, conf 0.6 -> gap 0.1; ECE = 0.5*0.1 + 0.5*0.1
    assert expected_calibration_error(labels, probs, 15) == pytest.approx(0.1, abs=1e-12)
    assert maximum_calibration_error(labels, probs, 15) == pytest.approx(0.1, abs=1e-12)
    # Brier: (0.01+0.01) + (0.01+0.01) + (0.16+0.16) + (0.36+0.36) = 1.08 over 4 images
    assert brier_score(labels, probs) == pytest.approx(1.08 / 4, abs=1e-12)


def test_ece_floor_is_the_ece_of_perfectly_calibrated_labels():
    """`ece_floor` equals the mean ECE of labels drawn from the predicted probabilities themselves (calibrated by
    construction), shrinks with the number of images, and is 0 for certain predictions."""
    from medkeras.evaluation.calibration import ece_floor

    rng = np.random.default_rng(1)
    p = rng.beta(0.5, 0.5, 156)
    probs = np.stack([1 - p, p], axis=1)
    drawn = [expected_calibration_error((rng.random(156) < p).astype(int), probs) for _ in range(400)]
    assert ece_floor(probs) == pytest.approx(np.mean(drawn), rel=0.05)
    assert ece_floor(np.tile(probs, (4, 1))) < 0.6 * ece_floor(probs)  # ~1/sqrt(n)
    assert ece_floor(np.array([[1.0, 0.0], [0.0, 1.0]])) == 0.0


def test_temperature_scaling_lowers_nll_on_real_predictions(tiny_run, breast):
    from medkeras.models.io import load_model

    model, _ = load_model(tiny_run[0])
    val = breast.splits["val"]
    x = np.repeat(val.images.astype(np.float32)[..., None], 3, axis=-1)
    raw = np.asarray(model.predict(x, verbose=0))
    t_raw = fit_temperature(val.labels, raw)
    assert nll(val.labels, raw, t_raw) <= nll(val.labels, raw, 1.0)
    logits = raw / raw.std() * 8.0  # the same real logits, made over-confident
    t = fit_temperature(val.labels, logits)
    assert t > 1.0
    assert nll(val.labels, logits, t) < nll(val.labels, logits, 1.0) - 1e-3


def test_report_has_every_section(tiny_run):
    run, _ = tiny_run
    page = (run / "report.html").read_text()
    for section in ("<h2>Data</h2>", "<h2>Metrics", "<h2>Calibration", "<h2>Plots</h2>", "<h2>Ensemble</h2>",
                    "<h2>Grad-CAM</h2>", "<h2>Error review</h2>", "<h2>Config</h2>"):
        assert section in page, section
    assert "At threshold" in page and "sensitivity" in page and "[" in page
    assert "identical images appear in train" in page  # BreastMNIST has one train/test duplicate: say so
    assert "resnet18_small alone" in page and "cnn8_small alone" in page
    for plot in ("roc", "pr", "reliability", "confusion_matrix", "training_history", "probability_distribution",
                 "metrics_vs_threshold"):
        assert (run / "plots" / f"{plot}.png").is_file(), plot
    metrics = json.loads((run / "metrics.json").read_text())
    auroc = metrics["test"]["intervals"]["auroc"]
    assert auroc["lower"] <= auroc["value"] <= auroc["upper"]
    assert {"ece", "ece_floor", "mce", "brier"} <= set(metrics["test"]["calibration"]["after"])
    assert (run / "duplicates.csv").read_text().splitlines()[1] == "identical,train,115,test,76"


def test_eval_threshold_rule_chosen_on_validation(tiny_run, tmp_path):
    run, _ = tiny_run
    result = run_cli("eval", run, "--threshold", "sensitivity@0.9", "--out", tmp_path / "ev")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["threshold_rule"] == "sensitivity@0.9"
    assert 0.0 < metrics["threshold"] < 1.0


def test_class_list_mismatch_is_one_line(tiny_run, tmp_path, png_folder):

    shutil.move(str(png_folder / "malignant"), str(png_folder / "tumour"))
    result = run_cli("eval", tiny_run[0], "--data", png_folder)
    assert result.returncode == 1 and "do not match the model's classes" in result.stderr.splitlines()[-1]


def test_gradcam_peaks_where_the_evidence_is(breast):
    """Class 1 = a bright 10x10 square pasted anywhere on a real ultrasound (64 px); the map must peak on it.

    cnn8_small's last feature map is 8x8 (8 px cells), so "on it" allows half a cell around the square.
    """
    import keras
    import tensorflow as tf

    from medkeras.evaluation.gradcam import gradcam
    from medkeras.models.ensemble import build_member

    size, side = 64, 10
    rng = np.random.default_rng(0)
    base = breast.splits["train"].images[:240].astype(np.float32)[..., None] * 0.5  # the square stays brightest
    images = np.repeat(tf.image.resize(base, (size, size)).numpy(), 3, axis=-1)
    labels = np.arange(len(images)) % 2
    where = rng.integers(0, size - side, size=(len(images), 2))
    for i in np.flatnonzero(labels):
        r, c = where[i]
        images[i, r : r + side, c : c + side] = 255.0
    keras.utils.set_random_seed(0)
    model = build_member("cnn8_small", 2, size)
    model.compile(keras.optimizers.Adam(2e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=False)  # traced: an eager fit of 5 x 240 images took minutes
    model.fit(images, labels, epochs=5, batch_size=32, verbose=0)
    test = np.flatnonzero(labels)[:12]
    maps = gradcam(model, images[test], np.ones(len(test), int))
    hits = 0
    for m, i in zip(maps, test):
        r, c = np.unravel_index(np.argmax(m), m.shape)
        hits += (where[i][0] - 4 <= r <= where[i][0] + side + 3) and (where[i][1] - 4 <= c <= where[i][1] + side + 3)
    assert hits >= 11, hits


def test_gradcam_command_on_an_ensemble(tiny_run, tmp_path, breast):

    for i in range(2):
        Image.fromarray(breast.splits["test"].images[i]).save(tmp_path / f"t{i}.png")
    result = run_cli("gradcam", tiny_run[0], tmp_path / "t0.png", tmp_path / "t1.png", "--out", tmp_path / "cams")
    assert result.returncode == 0, result.stderr
    written = sorted((tmp_path / "cams").glob("*.png"))
    assert [p.name for p in written] == ["0000_t0_gradcam.png", "0001_t1_gradcam.png"]
    index = (tmp_path / "cams" / "gradcam.csv").read_text().splitlines()  # which input each picture is
    assert index == ["png,path", "0000_t0_gradcam.png,t0.png", "0001_t1_gradcam.png,t1.png"]


def test_eval_config_defaults():
    cfg = EvalConfig()
    assert cfg.bootstrap == 1000 and cfg.ece_bins == 15 and cfg.calibrate == "temperature"


@pytest.mark.parametrize("name", ["resnet50", "efficientnetb0", "densenet121", "convnext_tiny", "mobilenetv3small",
                                  "regnety_4gf", "convnextv2_atto", "resnet18_small", "inceptionv3"])
def test_gradcam_runs_on_registry_backbones(name):
    """The member is rewired from its own graph for any backbone: a finite map of the input's size."""
    from medkeras.evaluation.gradcam import gradcam
    from medkeras.models.backbones import REGISTRY
    from medkeras.models.ensemble import build_member

    size = max(REGISTRY[name].min_size, 32)
    member = build_member(name, 2, size)
    x = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype("float32")
    maps = gradcam(member, x, [0, 1])
    assert maps.shape == (2, size, size) and np.isfinite(maps).all()
    assert maps.min() >= 0.0 and maps.max() <= 1.0 + 1e-6


def test_members_logits_come_from_the_ensembles_one_pass(breast):
    """predict_with_members: the ensemble's logits and each member's from one graph (one trace, one pass) equal
    predicting the ensemble and each member apart, with TTA and with fitted fusion weights, on real images."""
    from medkeras.config import DataConfig
    from medkeras.evaluation.evaluate import predict_logits, predict_with_members
    from medkeras.models import build_ensemble, build_member, members_of

    images = breast.splits["test"].images[:10]
    data_cfg = DataConfig(source="breastmnist", image_size=32)
    members = [build_member(n, 2, 32, member_name=n) for n in ("cnn8_small", "resnet18_small")]
    for model in (build_ensemble(members, 32), build_ensemble(members, 32, weights=[0.3, 0.7])):
        logits, by_member = predict_with_members(model, images, data_cfg, batch_size=4, flips=["horizontal"])
        assert list(by_member) == ["cnn8_small", "resnet18_small"]
        np.testing.assert_allclose(logits, predict_logits(model, images, data_cfg, 4, flips=["horizontal"]), atol=1e-5)
        for member in members_of(model):
            apart = predict_logits(member, images, data_cfg, 4, flips=["horizontal"])
            np.testing.assert_allclose(by_member[member.name], apart, atol=1e-5)
    single, none = predict_with_members(members[0], images, data_cfg, batch_size=4)
    assert none == {} and single.shape == (10, 2)


def test_a_threshold_rule_on_a_one_class_validation_split_is_refused_before_training(tmp_path, breast):
    """`fit` with `eval.threshold: youden` on a manifest whose validation rows are all one class stops in one line
    before the first epoch (it trained, then failed at its end, and `--resume` failed there again); a number is
    not refused."""
    from PIL import Image
    from conftest import run_cli

    from medkeras.evaluation.thresholds import check_choosable
    from medkeras.errors import DataError

    rows = []
    split = breast.splits["train"]
    for i in range(24):
        label = int(split.labels[i])
        path = tmp_path / f"img{i:02d}.png"
        Image.fromarray(split.images[i]).save(path)
        rows.append(f"{path.name},{breast.class_names[label]},{'val' if i >= 20 else 'train' if i < 16 else 'test'}")
    val = [r for r in rows if r.endswith(",val")]
    rows = [r for r in rows if not r.endswith(",val")] + [r.rsplit(",", 2)[0] + f",{breast.class_names[1]},val"
                                                          for r in val]
    (tmp_path / "m.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    result = run_cli("fit", "--out", tmp_path / "run", "--set", f"data.source={tmp_path / 'm.csv'}",
                     "--set", "eval.threshold=youden", "--set", "train.epochs=1")
    assert result.returncode == 1 and "validation split holds only" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "run" / "train_log.csv").exists()
    with pytest.raises(DataError, match="eval.threshold 'f1'"):
        check_choosable("f1", [0, 0, 0], 1, ["a", "b"], "m.csv")
    check_choosable("0.5", [0, 0, 0], 1, ["a", "b"], "m.csv")
    check_choosable("youden", [0, 1], 1, ["a", "b"], "m.csv")
