"""Metrics equal scikit-learn's on real-shaped predictions; undefined values are None, not a crash."""


import numpy as np
from sklearn import metrics as skm

from medkeras.evaluation.metrics import auroc, classification_metrics, softmax


def _predictions(n=300, k=2, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[labels]
    return labels, softmax(logits)


def test_binary_metrics_match_sklearn_with_positive_class_zero():
    labels, probs = _predictions()
    m = classification_metrics(labels, probs, ["malignant", "benign"], positive_class="malignant", threshold=0.4)
    y = labels == 0
    pred = probs[:, 0] >= 0.4
    assert m["auroc"] == skm.roc_auc_score(y, probs[:, 0])
    assert m["auprc"] == skm.average_precision_score(y, probs[:, 0])
    assert m["sensitivity"] == skm.recall_score(y, pred)
    assert m["specificity"] == skm.recall_score(~y, ~pred)
    assert m["ppv"] == skm.precision_score(y, pred)
    assert m["f1"] == skm.f1_score(y, pred)
    assert m["accuracy"] == skm.accuracy_score(y, pred)
    assert m["positive_class"] == "malignant" and m["threshold"] == 0.4


def test_multiclass_metrics_match_sklearn():
    labels, probs = _predictions(k=5, seed=1)
    names = [f"c{i}" for i in range(5)]
    m = classification_metrics(labels, probs, names)
    assert m["auroc"] == skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro")
    assert m["accuracy"] == skm.accuracy_score(labels, probs.argmax(1))
    assert m["f1_macro"] == skm.f1_score(labels, probs.argmax(1), average="macro")
    assert np.array_equal(m["confusion_matrix"], skm.confusion_matrix(labels, probs.argmax(1)))


def test_one_class_split_says_auroc_is_undefined():
    probs = softmax(np.random.default_rng(2).normal(size=(10, 2)))
    m = classification_metrics(np.zeros(10, int), probs, ["a", "b"])
    assert m["auroc"] is None and any("undefined" in n for n in m["notes"])
    assert auroc(np.zeros(10, int), probs) is None


def test_softmax_with_temperature():
    logits = np.array([[2.0, 0.0]])
    np.testing.assert_allclose(softmax(logits)[0, 0], 1 / (1 + np.exp(-2)), rtol=1e-6)
    np.testing.assert_allclose(softmax(logits, 2.0)[0, 0], 1 / (1 + np.exp(-1)), rtol=1e-6)


def test_the_fit_summary_says_when_val_and_test_were_scored_with_test_time_flips(tmp_path):
    import json

    from medkeras.evaluation.metrics import summary_lines

    scored = {"val": {"auroc": 0.91, "accuracy": 0.8, "n": 10}, "best_epoch": 3, "monitor": "val_auroc"}
    (tmp_path / "metrics.json").write_text(json.dumps({**scored, "tta_flips": ["horizontal"]}))
    lines = summary_lines(tmp_path)
    assert lines[0].startswith("val: AUROC 0.910") and "test-time flips (horizontal)" in lines[1]
    (tmp_path / "metrics.json").write_text(json.dumps({**scored, "tta_flips": []}))
    assert not any("flips" in line for line in summary_lines(tmp_path))
