"""The report says only what it knows, on a real model's logits (the tiny demo run on BreastMNIST): one honesty rule
for every table and plot, the ensemble table at the model's temperature, a calibration that worsens ECE flagged,
a fixed threshold called fixed, plots counting epochs as the log does, reliability bins with their counts, plurals."""

import numpy as np
import pytest

from medkeras.config import load_config
from medkeras.evaluation import plots
from medkeras.evaluation.evaluate import operating_point, predict_with_members, score_arrays, write_outputs
from medkeras.evaluation.intervals import Draws


@pytest.fixture(scope="module")
def scored_inputs(tiny_run, breast):
    """(model, config, meta, the test split's real logits and members' logits) of the tiny demo run."""
    from medkeras.models.io import open_model

    loaded = open_model(tiny_run[0])
    cfg = loaded.config
    split = breast.splits["test"]
    logits, members = predict_with_members(loaded.model, split.images, cfg.data, 64)
    return loaded, cfg, logits, members


def _score(breast, cfg, logits, members, temperature, threshold, ix=None):
    split = breast.splits["test"]
    ix = np.arange(len(split)) if ix is None else np.asarray(ix)
    sub = split.take(ix)
    breast_sub = type(breast)(breast.name, breast.class_names, {**breast.splits, "test": sub}, breast.positive_class)
    return score_arrays("test", breast_sub, (sub.images, sub.labels, sub.names()), logits[ix], temperature, threshold,
                        {}, cfg.eval, {k: v[ix] for k, v in members.items()})


def test_the_model_as_saved_row_is_the_metrics_table_at_its_temperature(scored_inputs, breast):
    loaded, cfg, logits, members = scored_inputs
    labels = breast.splits["test"].labels
    temperature = 0.6  # != 1, with the Youden threshold chosen at it, as calibration leaves a model
    threshold = operating_point(labels, logits, breast.class_names, breast.positive_class, temperature, "youden")
    scored = _score(breast, cfg, logits, members, temperature, threshold)
    saved = scored["ensemble"][-1]
    m = scored["metrics"]
    assert saved["model"] == "model as saved" and len(scored["ensemble"]) == 4  # 2 members alone, average, saved
    assert saved["accuracy"] == m["accuracy"] and saved["auroc"] == m["auroc"]
    assert saved["ece"] == pytest.approx(m["calibration"]["after"]["ece"], abs=1e-12)
    assert (saved["auroc_lower"], saved["auroc_upper"]) == (m["intervals"]["auroc"]["lower"],
                                                           m["intervals"]["auroc"]["upper"])


def test_too_few_cases_get_the_same_note_in_every_table_and_no_band(scored_inputs, breast, tmp_path):
    loaded, cfg, logits, members = scored_inputs
    labels = breast.splits["test"].labels
    ix = np.concatenate([np.flatnonzero(labels == 0)[:3], np.flatnonzero(labels == 1)[:20]])  # 3 malignant
    scored = _score(breast, cfg, logits, members, 1.0, 0.5, ix)
    note = scored["metrics"]["intervals"]["auroc"]["note"]
    assert note == "3 cases of the rarer class: too few for an interval"
    assert {row["auroc_note"] for row in scored["ensemble"]} == {note}
    assert all(row["auroc_lower"] is None for row in scored["ensemble"])
    write_outputs(tmp_path, scored, breast, cfg, loaded.meta)
    html = (tmp_path / "report.html").read_text()
    assert html.count(note) >= 1 + len(scored["ensemble"])  # the metrics table, each ensemble row
    assert "The ROC plot has no band: " + note in html
    assert "(n = 23, 3 positives)" in html


def test_a_temperature_that_worsens_the_ece_is_flagged(scored_inputs, breast, tmp_path):
    loaded, cfg, logits, members = scored_inputs
    scored = _score(breast, cfg, logits, members, 5.0, 0.5)  # far too soft: ECE rises
    cal = scored["metrics"]["calibration"]
    assert cal["after"]["ece"] > cal["before"]["ece"] and cal["worse"] is True
    note = [n for n in scored["metrics"]["notes"] if n.startswith("temperature scaling")]
    assert note and f"from {cal['before']['ece']:.3f} to {cal['after']['ece']:.3f}" in note[0]
    write_outputs(tmp_path, scored, breast, cfg, loaded.meta)
    assert note[0] in (tmp_path / "report.html").read_text()
    better = _score(breast, cfg, logits, members, 1.0, 0.5)["metrics"]["calibration"]
    assert better["worse"] is False


def test_a_fixed_threshold_is_called_fixed(scored_inputs, breast, tmp_path):
    loaded, cfg, logits, members = scored_inputs
    write_outputs(tmp_path, _score(breast, cfg, logits, members, 1.0, 0.5), breast, cfg,
                  {**loaded.meta, "threshold_rule": "0.5"})
    html = (tmp_path / "report.html").read_text()
    assert "(fixed)" in html and "0.5, chosen on validation" not in html
    youden = load_config("demo", ["eval.threshold=youden"])
    write_outputs(tmp_path / "y", _score(breast, cfg, logits, members, 1.0, 0.5), breast, youden,
                  {**loaded.meta, "threshold_rule": "youden"})
    assert "rule: youden, chosen on validation" in (tmp_path / "y" / "report.html").read_text()


def _drawn(monkeypatch):
    """The figures plots.py draws, kept open for the test to read."""
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    return figures


def test_plots_count_epochs_as_the_log_does_and_bins_show_their_counts(tiny_run, scored_inputs, breast, monkeypatch):
    import csv

    figures = _drawn(monkeypatch)
    run, _ = tiny_run
    plots.history(run / "train_log.csv", run / "unused.png")
    with open(run / "train_log.csv") as fh:
        epochs = [int(r["epoch"]) for r in csv.DictReader(fh)]
    assert epochs == [1, 2]
    assert list(figures[0].axes[0].lines[0].get_xdata()) == epochs  # epoch 1 drawn at 1, not 2
    _, cfg, logits, _ = scored_inputs
    labels = breast.splits["test"].labels
    plots.reliability(labels, logits, 1.0, 15, run / "unused.png")
    from medkeras.evaluation.calibration import reliability_bins
    from medkeras.evaluation.metrics import softmax

    counts = reliability_bins(labels, softmax(logits, 1.0), 15)["counts"]
    shown = [int(t.get_text()) for t in figures[1].axes[0].texts][: int((counts > 0).sum())]
    assert shown == [int(c) for c in counts if c > 0] and sum(shown) == len(labels)


def test_counts_agree_in_number():
    from medkeras.progress import counted

    assert counted(1, ("positive", "positives")) == "1 positive" and counted(3, ("positive", "positives")) == "3 positives"
    assert counted(1, "unreadable study") == "1 unreadable study" and counted(2, "study") == "2 studies"
    one = Draws(4, 10, seed=0, groups=["p", "p", "p", "p"])
    assert one.method == "cluster bootstrap over 1 patient (10 resamples)"
    two = Draws(4, 10, seed=0, groups=["p", "p", "q", "q"])
    assert "cluster bootstrap over 2 patients (10 resamples)" == two.method


def test_a_series_run_reports_the_slices_its_attention_weighed_with_their_grad_cam(study_run):
    """A series model's run on real CT studies: `attention.csv` has every test study's weights (summing to one,
    the top slice the largest), and the report shows the top slices of each shown study as Grad-CAM overlays
    through the attention pooling (`SeriesCAM`), whose maps are normalised within each study."""
    import csv
    import re

    from medkeras.data.resize import to_model_channels
    from medkeras.data.studies import load_items, study_split_arrays
    from medkeras.evaluation.gradcam import study_gradcam
    from medkeras.models.io import open_model

    run, _, _ = study_run
    with open(run / "attention.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    with open(run / "predictions.csv", newline="") as fh:
        assert [r["path"] for r in rows] == [r["path"] for r in csv.DictReader(fh)]
    for row in rows:
        weights = [float(v) for k, v in row.items() if k.startswith("slice_")]
        assert len(weights) == 4 and abs(sum(weights) - 1) < 1e-4
        assert int(row["top_slice"]) == int(np.argmax(weights))
    report = (run / "report.html").read_text()
    assert "Grad-CAM" in report and "slice attention" not in report.split("Grad-CAM")[0][-40:]
    assert "volume size [4, 32, 32]" in report and "only 4 studies in the test split" in report  # said of studies
    assert "By study, series and patient" in report and "By slice" not in report
    shown = re.findall(r"<figcaption>slice (\d): ([0-9.]+)</figcaption>", report)
    assert shown and len(shown) % 3 == 0  # the three slices each shown study weighed most
    loaded = open_model(run)
    cfg = loaded.config
    split = load_items(cfg.data, seed=cfg.train.seed, studies=True).splits["test"]
    volumes, *_ = study_split_arrays(split, cfg.data)
    studies = to_model_channels(volumes).numpy()
    peaks = []
    for k in (0, 1):
        maps = study_gradcam(loaded.model, studies, k)
        assert maps.shape == (len(studies), 4, 32, 32) and maps.min() >= 0
        peaks += list(maps.reshape(len(maps), -1).max(axis=1))  # 1 within a study, 0 where no evidence is positive
    assert np.all(np.isclose(peaks, 1.0, rtol=1e-6) | (np.asarray(peaks) == 0)) and np.isclose(peaks, 1.0).any()
