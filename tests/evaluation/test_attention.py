"""`evaluation/attention.py`: the slice attention `eval` writes to `attention.csv` and the report shows is the one
`predict` and the export serve: each series member's weights averaged over the model's test-time flips."""

import csv

import numpy as np
import pydicom
from conftest import LUNG, SERIES_3


def _real_studies(root):
    """Two real CT studies (8 x 32 x 32, lung window, 3 channels): the tumour block of each of the patient's series."""
    from medkeras.data.studies import study_volume

    out = []
    for source in (LUNG, SERIES_3):
        folder = root / source.name
        folder.mkdir(parents=True)
        for name in ("1-13.dcm", "1-14.dcm"):
            pydicom.dcmread(source / name).save_as(folder / name)
        out.append(study_volume(folder, [[-600.0, 1500.0]], size=(8, 32, 32)))
    return np.repeat(np.stack(out), 3, axis=-1)


def test_study_attention_is_the_served_attention_under_test_time_flips(tmp_path):
    from medkeras.config import load_config
    from medkeras.evaluation.attention import study_attention, write_attention
    from medkeras.models.study import build_study_model, slice_attention, with_attention
    from medkeras.models.tta import with_tta

    x = _real_studies(tmp_path)
    cfg = load_config("lung-ct-study", ["data.image_size=32", "data.volume_size=[8, 32, 32]", "data.spacing=null",
                                        "model.backbones=[cnn8_small, resnet18_small]", "model.weights=none"])
    model = build_study_model(cfg.model, cfg.data, 2)
    flips = ["horizontal", "vertical"]
    found = study_attention(model, x, cfg.data, flips=flips)
    assert list(found) == ["cnn8_small", "resnet18_small"] and all(w.shape == (2, 8) for w in found.values())
    for name, weights in found.items():
        member = model.get_layer(name)
        views = [x, x[..., ::-1, :], x[..., ::-1, :, :]]  # the study, mirrored, upside down
        want = np.mean([np.asarray(slice_attention(member)(v)) for v in views], axis=0)
        np.testing.assert_allclose(weights, want, rtol=1e-5, atol=1e-7)
    served = np.asarray(with_attention(with_tta(model, flips))(x)[1])  # what predict and the signatures answer
    np.testing.assert_allclose(np.mean(list(found.values()), axis=0), served, rtol=1e-5, atol=1e-7)
    plain = study_attention(model, x, cfg.data)  # no flips: the image alone, as before
    assert not np.allclose(plain["cnn8_small"], found["cnn8_small"], atol=1e-7)
    write_attention(tmp_path / "attention.csv", ["a/study", "b/study"], found)
    with open(tmp_path / "attention.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["path"], r["member"]) for r in rows] == [("a/study", "cnn8_small"), ("b/study", "cnn8_small"),
                                                         ("a/study", "resnet18_small"), ("b/study", "resnet18_small")]
    assert [int(r["top_slice"]) for r in rows] == [int(np.argmax(w)) for m in found.values() for w in m]


def test_models_without_series_members_and_slices_have_no_attention():
    from medkeras.evaluation.attention import study_attention

    assert study_attention(None, np.zeros((2, 32, 32, 3)), None) == {}
