"""Every bundled recipe, whole, through every door: `fit` from the CLI with the recipe's own switches (TTA, windows,
fusion, separate members, progressive resizing, two phases, class weights, precision), then the probability of
each test file as `eval` wrote it in `predictions.csv` against `medkeras predict` on the run (CLI), on its
`.keras` file and on the export (library), and the SavedModel's signatures (`serving_default`, `serve_encoded` for
pictures, `serve_hu` for DICOM): within 1e-4 per file, the same label at the saved threshold.

The quick suite runs each recipe at a tiny size on real data with small backbones in place of the recipe's big
ones (everything else as bundled); `-m slow` runs the recipes' own architectures.
"""

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES, LUNG, run_cli, write_patients

import medkeras

TOLERANCE = 1e-4
TINY = ["train.steps_per_epoch=2", "train.batch_size=4", "train.run_eagerly=true", "train.verbose=0",
        "eval.bootstrap=20", "eval.gradcam_examples=1"]
# each recipe: (its data (a builder below), its switches at a tiny size, small backbones standing in for its own)
RECIPES = {
    "demo": ("breastmnist", ["train.epochs=2"], None),
    "breastmnist-quality": ("breastmnist", ["train.epochs=2", "data.image_size=32",
                                            "train.precision=mixed_bfloat16"], None),
    "pneumoniamnist-quality": ("pneumonia_npz", ["train.epochs=2"], None),
    "lung-ct-ensemble": ("ct_manifest", ["train.epochs=2", "train.freeze_epochs=1", "data.image_size=32",
                                         "model.weights=none", "train.precision=mixed_float16"],
                         "[cnn8_small, resnet18_small, cnn8_small]"),
    "cancer-resnet34-frozen": ("ct_folders", ["train.epochs=2", "data.image_size=32", "model.weights=none"],
                               "[resnet18_small]"),
    "spine-xray-ensemble": ("xray_manifest", ["train.epochs=2", "data.image_size=32", "model.weights=none",
                                              "train.size_schedule=[[1, 16], [2, 32]]", "train.batch_size=8",
                                              "train.size_schedule_members=[resnet18_small]"],
                            "[cnn8_small, resnet18_small, cnn8_small]"),
    "cxr-5class": ("five_class_folders", ["train.epochs=2", "train.freeze_epochs=1", "data.image_size=32",
                                          "model.weights=none"], "[cnn8_small, resnet18_small]"),
    # studies: real CT series as TCIA lays them out, resampled to 4 slices of 32 px (the recipe's mixed_float16,
    # TTA and two phases kept); the 3D recipe at its spacing, 16 slices of 32 px covering the same field of view
    "lung-ct-study": ("ct_studies", ["train.epochs=2", "train.freeze_epochs=1", "data.image_size=32",
                                     "data.volume_size=[4, 32, 32]", "data.spacing=null", "model.weights=none"],
                      "[cnn8_small, resnet18_small]"),
    "lung-ct-3d": ("ct_studies", ["train.epochs=2", "data.volume_size=[16, 32, 32]", "data.spacing=[5.0, 11.2, 11.2]",
                                  "train.size_schedule=[[1, 16], [2, 32]]"], None),
}
# each study model kind apart from the bundled ones: (recipe, switches)
STUDY_KINDS = {"slab": ("lung-ct-study", ["model.input=slab", "data.slab=3", "model.backbones=[cnn8_small]",
                                          "train.precision=float32", "train.size_schedule=[[1, 16], [2, 32]]"])}
# the recipes' own architectures, at 32 px (-m slow)
OWN = {"lung-ct-ensemble": "[vgg19_bn, efficientnetb0, resnet101]", "cancer-resnet34-frozen": "[resnet34]",
       "spine-xray-ensemble": "[densenet121, efficientnetv2s, resnet50]",
       "cxr-5class": "[convnextv2_tiny, efficientnetv2s, regnety_4gf]"}


def _png(path, image):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(image, np.uint8)).save(path)
    return path


def _pneumonia():
    return np.load(FIXTURES / "pneumoniamnist" / "pneumoniamnist.npz")


def build_data(kind, root: Path, breast) -> tuple[str, list]:
    """(data.source, extra --set) of real data laid out as a user of the recipe has it."""
    if kind == "breastmnist":
        return "breastmnist", []
    if kind == "pneumonia_npz":  # MedMNIST's file, as its name says (the class names come from it)
        shutil.copy(FIXTURES / "pneumoniamnist" / "pneumoniamnist.npz", root / "pneumoniamnist.npz")
        return str(root / "pneumoniamnist.npz"), []
    if kind in ("ct_manifest", "ct_folders"):  # the real CT slices as ten patients' series (DICOM, absolute paths)
        patients = [f"P{i}" for i in range(10)]
        paths = write_patients(root / "dicom", patients, normal=patients[::3])
        if kind == "ct_folders":  # one folder per class: normal/, tumour/
            return str(root / "dicom"), []
        manifest = root / "lung" / "manifest.csv"
        manifest.parent.mkdir()
        with open(manifest, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", "label", "patient_id"])
            for p in paths:
                writer.writerow([p, "normal" if p.parent.name == "normal" else "cancerous", p.name.split("-")[0]])
        return str(manifest), []
    if kind == "ct_studies":  # six patients' CT studies, a series folder each, split by patient as the recipe says
        from conftest import study_source

        return str(study_source(root / "studies", patients=6, positive="cancerous", splits=False)), []
    if kind == "xray_manifest":  # chest X-rays as PNG files, listed with a split column
        data, rows = _pneumonia(), []
        for split in ("train", "val", "test"):
            for i, (image, label) in enumerate(zip(data[f"{split}_images"], data[f"{split}_labels"].ravel())):
                path = _png(root / "xray" / split / f"{split}{i:03d}.png", image)
                rows.append([path.relative_to(root / "xray"), ["normal", "pneumonia"][label], split])
        with open(root / "xray" / "manifest.csv", "w", newline="") as fh:
            csv.writer(fh).writerows([["path", "label", "split"], *rows])
        return str(root / "xray" / "manifest.csv"), ["data.positive_class=pneumonia"]
    if kind == "five_class_folders":  # five classes of real pictures: X-ray, ultrasound, CT in the lung window
        from medkeras.data.readers import read_image

        data, splits = _pneumonia(), breast.splits["train"]
        classes = {
            "xray_normal": data["train_images"][data["train_labels"].ravel() == 0][:12],
            "xray_pneumonia": data["train_images"][data["train_labels"].ravel() == 1][:12],
            "us_malignant": splits.images[splits.labels == 0][:12],
            "us_benign": splits.images[splits.labels == 1][:12],
            "ct_lung": [np.clip(np.round(read_image(LUNG / n, [[level, 1500.0]])[..., 0]), 0, 255)
                        for n in ("1-01.dcm", "1-13.dcm", "1-14.dcm") for level in (-700, -650, -600, -550)],
        }
        for name, images in classes.items():
            for i, image in enumerate(images):
                _png(root / "cxr5" / name / f"{name}{i:02d}.png", image)
        return str(root / "cxr5"), []
    raise ValueError(kind)


def _rows(path) -> list:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def recipe_test_files(run: Path, root: Path) -> dict:
    """{name in predictions.csv: the file holding that test image}: the source's own files, or (a MedMNIST .npz,
    whose items are array rows) each test image written losslessly as a PNG."""
    from medkeras.data.studies import load_items
    from medkeras.models.io import load_model

    _, meta = load_model(run)
    cfg = medkeras.config.from_dict(meta["config"])
    split = load_items(cfg.data, seed=cfg.train.seed, studies=medkeras.config.is_study(cfg)).splits["test"]
    if split.paths is not None:
        return {name: Path(p) for name, p in zip(split.names(), split.paths)}
    return {name: _png(root / "test-png" / f"{name}.png", image) for name, image in zip(split.names(), split.images)}


def through_every_door(run: Path, export: Path, files: dict, tmp: Path) -> dict:
    """Asserts every door gives `eval`'s probabilities and labels for each file. -> the largest gap per door."""
    import tensorflow as tf

    from medkeras.data.readers import common_folder, is_dicom, read_dicom_hu, read_image

    evaluated = medkeras.evaluate(run, split="test", out=tmp / "eval")
    assert evaluated["tta_as_served"], "eval must score the model as it is served"
    config = json.loads((export / "assets" / "medkeras.json").read_text())["config"]
    if config["data"]["class_names"] and config["data"]["class_names"] != sorted(config["data"]["class_names"]):
        again = medkeras.evaluate(run, data=config["data"]["source"], split="test", out=tmp / "eval-data")
        assert again["auroc"] == evaluated["auroc"]  # `eval --data`: the source's classes matched by name
    meta = json.loads((export / "assets" / "medkeras.json").read_text())
    classes = meta["class_names"]
    columns = [f"p_{c}" for c in classes]
    expected = {r["path"]: r for r in _rows(tmp / "eval" / "predictions.csv")}
    fitted = {r["path"]: r for r in _rows(run / "predictions.csv")}
    assert set(expected) == set(files) == set(fitted)
    by_file = {files[name].resolve(): name for name in files}  # each door names a file its own way
    answers = {}  # door -> {name: (probabilities, label)}
    tops = {}  # door -> {name: top slice}, for series models
    paths = [str(p) for p in files.values()]
    result = run_cli("predict", run, *paths, "--out", tmp / "cli.csv")
    assert result.returncode == 0, result.stderr[-2000:]
    for door, source in (("predict RUN (CLI)", None), ("predict model.keras", run / "model.keras"),
                         ("predict SavedModel", export)):
        out = tmp / "cli.csv" if source is None else tmp / f"{door.split()[1]}.csv"
        if source is not None:
            medkeras.predict(source, paths, out=out, progress=False)
        rows = _rows(out)
        assert len(rows) == len(files)
        # predict names files given by absolute path relative to the folder they share
        shared = common_folder(paths)
        named = {os.path.relpath(p, shared): by_file[Path(p).resolve()] for p in paths}
        answers[door] = {named[r["path"]]: ([float(r[c]) for c in columns], r["predicted"]) for r in rows}
        if "top_slice" in rows[0]:  # a series model: every door names the slice its attention weighed most
            tops.setdefault(door, {}).update({named[r["path"]]: int(r["top_slice"]) for r in rows})
    signatures = tf.saved_model.load(str(export)).signatures
    windows = meta.get("windows") or []
    studies = meta.get("model_input", "slice") != "slice"
    for name, path in (files.items() if studies else ()):  # a study: its pixels, and its HU volume with spacing
        from medkeras.data.readers import read_volume
        from medkeras.data.studies import study_volume

        pixels = study_volume(path, windows, meta.get("spacing"), meta["volume_size"])
        volume = read_volume(path)
        got = {"serving_default": signatures["serving_default"](image=tf.constant(pixels[None])),
               "serve_volume": signatures["serve_volume"](hu=tf.constant(volume.hu[None], tf.float32),
                                                          spacing=tf.constant([volume.spacing], tf.float32))}
        for door, out in got.items():
            answers.setdefault(door, {})[name] = (out["probabilities"].numpy()[0].tolist(),
                                                  classes[int(out["label"].numpy()[0])])
            if "top_slice" in out:
                tops.setdefault(door, {})[name] = int(out["top_slice"].numpy()[0])
    if studies and meta.get("model_input") == "series":
        assert set(tops) == {"predict RUN (CLI)", "predict model.keras", "predict SavedModel", "serving_default",
                             "serve_volume"}, tops
        assert all(by_name == tops["predict model.keras"] for by_name in tops.values()), tops
        weights = {}  # eval's attention.csv: each series member's weights (over the recipe's test-time flips)
        for r in _rows(tmp / "eval" / "attention.csv"):
            weights.setdefault(r["path"], []).append([float(v) for k, v in r.items() if k.startswith("slice_")])
        assert set(weights) == set(files)
        report_tops = {name: int(np.argmax(np.mean(w, axis=0))) for name, w in weights.items()}
        assert report_tops == tops["predict model.keras"], "the report's top slices must be the ones served"
    for level in ("series", "patient") if studies else ():  # a group counts what it holds: studies
        if (tmp / "eval" / f"predictions.{level}.csv").exists():
            assert "studies" in _rows(tmp / "eval" / f"predictions.{level}.csv")[0]
    for name, path in (() if studies else files.items()):
        got = {"serving_default": signatures["serving_default"](image=tf.constant(read_image(path, windows)[None]))}
        if is_dicom(path):
            got["serve_hu"] = signatures["serve_hu"](hu=tf.constant(read_dicom_hu(path)[None]))
        else:
            got["serve_encoded"] = signatures["serve_encoded"](image_bytes=tf.constant([path.read_bytes()]))
        for door, out in got.items():
            answers.setdefault(door, {})[name] = (out["probabilities"].numpy()[0].tolist(),
                                                  classes[int(out["label"].numpy()[0])])
    gaps = {}
    for door, by_name in answers.items():
        assert set(by_name) == set(expected), door
        gaps[door] = 0.0
        for name, (probs, label) in by_name.items():
            want = [float(expected[name][c]) for c in columns]
            assert [float(fitted[name][c]) for c in columns] == pytest.approx(want, abs=1e-7), name  # fit = eval
            gap = float(np.abs(np.asarray(probs) - want).max())
            gaps[door] = max(gaps[door], gap)
            assert gap <= TOLERANCE, f"{door} on {name}: {probs} vs eval's {want}"
            assert label == expected[name]["predicted"], f"{door} labels {name} {label}, eval {expected[name]}"
    return gaps


def _fit_and_export(name, root, breast, backbones, more=()):
    kind, switches, small = RECIPES[name]
    source, extra = build_data(kind, root, breast)
    sets = [f"data.source={source}", *switches, *TINY, *extra]
    if backbones or small:
        sets.append(f"model.backbones={backbones or small}")
    sets += more  # last: a study kind's own switches
    run = root / "run"
    args = ["fit", name, "--out", run]
    for item in sets:
        args += ["--set", item]
    result = run_cli(*args, timeout=1500)
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_cli("export", run, "--out", root / "serving", "--name", "recipe", timeout=1500)
    assert result.returncode == 0, result.stderr[-3000:]
    return run, root / "serving" / "recipe" / "1"


def _check_recipe(name, run, export, tmp):
    from medkeras.models.io import load_model

    _, meta = load_model(run)
    config = meta["config"]
    facts = json.loads((export / "assets" / "preprocessing.json").read_text())
    flips = config["eval"]["tta_flips"] if config["eval"]["tta"] else []
    assert meta["tta_flips"] == facts["tta_flips"] == flips  # the recipe's TTA, said to the client
    assert facts["windows"] == (config["data"]["window"] or [])
    from medkeras.models.ensemble import member_names

    names = member_names(config["model"]["backbones"])
    apart = config["train"]["ensemble"] == "separate" and len(names) > 1
    for log in [run / f"train_log_{n}.csv" for n in names] if apart else [run / "train_log.csv"]:
        with open(log, newline="") as fh:  # one row per epoch, counted from 1, through both phases
            assert [r["epoch"] for r in csv.DictReader(fh)] == [str(e) for e in range(1, config["train"]["epochs"] + 1)]
    members = [r["model"] for r in json.loads((run / "metrics.json").read_text())["ensemble"]]
    assert members[: len(names)] == ([f"{n} alone" for n in names] if len(names) > 1 else [])
    gaps = through_every_door(run, export, recipe_test_files(run, tmp), tmp)
    print(name, json.dumps(gaps))


@pytest.mark.parametrize("name", [n for n in RECIPES if n != "demo"])
def test_a_recipe_whole_through_every_door(name, tmp_path, breast):
    run, export = _fit_and_export(name, tmp_path, breast, None)
    _check_recipe(name, run, export, tmp_path)


@pytest.mark.parametrize("kind", sorted(STUDY_KINDS))
def test_a_study_model_kind_whole_through_every_door(kind, tmp_path, breast):
    name, switches = STUDY_KINDS[kind]
    run, export = _fit_and_export(name, tmp_path, breast, None, switches)
    _check_recipe(name, run, export, tmp_path)


def test_the_demo_whole_through_every_door(exported, tmp_path):
    """The demo as the shared fixtures ran it (`tiny_run`, `exported`)."""
    export, run = exported
    _check_recipe("demo", run, export, tmp_path)


def test_every_bundled_config_has_a_recipe_test():
    assert set(RECIPES) == set(medkeras.config.bundled_configs())


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(OWN))
def test_a_recipe_with_its_own_architectures(name, tmp_path, breast):
    run, export = _fit_and_export(name, tmp_path, breast, OWN[name])
    _check_recipe(name, run, export, tmp_path)
