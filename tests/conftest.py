"""Shared fixtures: real data only (the bundled BreastMNIST, pydicom's CT_small, three Lung-PET-CT-Dx slices in
`fixtures/`), the files users have made from them (other sizes and encodings), and the runs and exports the
CLI, evaluation and export tests share."""

import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The patient-key secret of this test session (the CLI subprocesses inherit it): nothing under ~/.config is touched
os.environ["MEDKERAS_PATIENT_KEY_FILE"] = str(Path(tempfile.mkdtemp(prefix="medkeras-keys-")) / "patient.key")
Path(os.environ["MEDKERAS_PATIENT_KEY_FILE"]).write_text("a-test-session-secret-" + os.urandom(8).hex() + "\n")

FIXTURES = Path(__file__).parent / "fixtures"
LUNG = FIXTURES / "lung_pet_ct_dx_A0001"


# Each test file runs on one xdist worker (its module and session fixtures are built once: `-n 2 --dist loadgroup`
# in pyproject), except the recipes harness, whose tests share nothing costly: one recipe to a worker.
SPREAD = {"test_recipes.py"}


def pytest_collection_modifyitems(items):
    for item in items:
        if not item.get_closest_marker("xdist_group"):
            group = item.nodeid if item.path.name in SPREAD else str(item.path)
            item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(scope="session")
def breast():
    from medkeras.config import DataConfig
    from medkeras.data.sources import load_dataset

    return load_dataset(DataConfig(source="breastmnist"))


@pytest.fixture(scope="session")
def ct_small_path():
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("CT_small.dcm"))


@pytest.fixture
def png_folder(tmp_path, breast):
    """A folder-per-class dataset of real BreastMNIST images written as PNG (12 per class)."""
    from PIL import Image

    root = tmp_path / "pngs"
    split = breast.splits["train"]
    for label, name in enumerate(breast.class_names):
        (root / name).mkdir(parents=True)
        for i in np.flatnonzero(split.labels == label)[:12]:
            Image.fromarray(split.images[i]).save(root / name / f"img{i:04d}.png")
    return root


CLI_CWD = Path(tempfile.mkdtemp(prefix="medkeras-cli-"))  # what a command writes by default lands here, not in the checkout


def run_cli(*args, timeout=600, cwd=None):
    """Run the real `medkeras` entry point in a subprocess: exit status, stdout and stderr as a user sees them
    (in `cwd`, by default a folder of its own)."""
    return subprocess.run(
        [sys.executable, "-m", "medkeras", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd or CLI_CWD,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


@pytest.fixture(scope="session", autouse=True)
def nothing_written_into_the_checkout():
    """Tests write only under temporary directories: the checkout holds no new files when they end."""
    root = Path(__file__).resolve().parents[1]
    before = {p for p in root.iterdir()}
    yield
    new = sorted(p.name for p in set(root.iterdir()) - before)
    assert new == [], f"tests wrote into the checkout: {new}"
    assert not (CLI_CWD / "runs").exists(), "a failed command left a run directory (or an empty runs/) behind"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One real `medkeras fit` of the demo, cut to a few eager steps: the run directory the CLI tests share."""
    out = tmp_path_factory.mktemp("runs") / "demo-tiny"
    result = run_cli(
        "fit", "--out", out,
        "--set", "train.epochs=2", "--set", "train.steps_per_epoch=3", "--set", "train.run_eagerly=true",
        "--set", "train.verbose=0",
    )
    assert result.returncode == 0, result.stderr
    return out, result


def data_cfg(**values):
    """A `DataConfig` as `load_config` leaves it: validated, `data.window` resolved to [[level, width], ...]."""
    from medkeras.config import Config, DataConfig, validate

    cfg = Config(data=DataConfig(**values))
    validate(cfg)
    return cfg.data


@pytest.fixture
def dicom_variants(tmp_path, ct_small_path):
    """Real pixels in every plain layout the graph reads: two Lung-PET-CT-Dx slices, CT_small as stored (explicit
    VR, int16), implicit VR and MONOCHROME1 copies; then files it must leave to pydicom (big-endian MR, multi-frame,
    colour) and a truncated copy. -> (plain, other)"""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import ImplicitVRLittleEndian

    ds = pydicom.dcmread(ct_small_path)
    implicit = tmp_path / "implicit.dcm"
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.save_as(implicit, enforce_file_format=True)
    mono1 = tmp_path / "mono1.dcm"
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(mono1, enforce_file_format=True)
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(Path(ct_small_path).read_bytes()[:-1000])  # cut inside the pixel data
    plain = [LUNG / "1-01.dcm", LUNG / "1-14.dcm", Path(ct_small_path), implicit, mono1]
    other = [Path(get_testdata_file(n)) for n in ("MR_small_bigendian.dcm", "emri_small.dcm", "SC_rgb.dcm")]
    return plain, other + [truncated]


def ct_pixels(name="1-13.dcm"):
    """A real CT slice (512 x 512) in the lung, mediastinum and bone windows, as uint8 (H, W, 3)."""
    from medkeras.data.readers import read_image

    windows = [[-600.0, 1500.0], [50.0, 350.0], [400.0, 1800.0]]
    return np.clip(np.round(read_image(LUNG / name, windows)), 0, 255).astype(np.uint8)


def write_real_encodings(folder, breast_images) -> list:
    """Real images as users have them: a CT slice (lung window) and BreastMNIST ultrasound enlarged to 623 x 512,
    each saved as JPEG quality 75 and 95, PNG 8-bit and 16-bit, grey and RGB, at 512 x 512 and 623 x 512.
    -> the paths, named after what they hold."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ct = ct_pixels()
    breast = np.asarray(Image.fromarray(breast_images[0]).resize((623, 512), Image.BICUBIC))
    greys = {"ct512": ct[..., 0], "ct623": np.asarray(Image.fromarray(ct[..., 0]).resize((623, 512), Image.BICUBIC)),
             "breast623": breast}
    colours = {"ct512rgb": ct, "breast623rgb": np.dstack([breast, np.roll(breast, 7, 0), 255 - breast])}
    paths = []

    def save(name, image, fmt, **options):
        path = folder / name
        image.save(path, format=fmt, **options)
        paths.append(path)

    for name, array in {**greys, **colours}.items():
        picture = Image.fromarray(array)
        for quality in (75, 95):
            save(f"{name}_q{quality}.jpg", picture, "JPEG", quality=quality)
        save(f"{name}_8bit.png", picture, "PNG")
        if array.ndim == 2:  # 16-bit grey: the 8-bit values spread over 0..65535, plus fine detail in the low byte
            deep = array.astype(np.uint16) * 257 + (np.arange(array.size).reshape(array.shape) % 257).astype(np.uint16)
            save(f"{name}_16bit.png", Image.fromarray(deep), "PNG")
    import tensorflow as tf

    deep_rgb = colours["ct512rgb"].astype(np.uint16) * 257  # 16-bit colour: Pillow cannot write it, TF can
    path = folder / "ct512rgb_16bit.png"
    path.write_bytes(tf.io.encode_png(tf.constant(deep_rgb)).numpy())
    paths.append(path)
    return paths



@pytest.fixture(scope="session")
def exported(tiny_run, tmp_path_factory):
    """`medkeras export` of the tiny demo run -> (SavedModel version directory, run directory)."""
    run, _ = tiny_run
    base = tmp_path_factory.mktemp("serving")
    result = run_cli("export", run, "--out", base, "--name", "breast")
    assert result.returncode == 0, result.stderr
    assert "verified on 32 validation images" in result.stdout
    return base / "breast" / "1", run


@pytest.fixture(scope="session")
def test_pngs(tmp_path_factory, breast):
    """Six real BreastMNIST test images as PNG files."""
    from PIL import Image

    root = tmp_path_factory.mktemp("pngs")
    split = breast.splits["test"]
    paths = []
    for i in range(6):
        path = root / f"test{i}.png"
        Image.fromarray(split.images[i]).save(path)
        paths.append(path)
    return paths


def raw_id_traces(patient_id: str) -> list[bytes]:
    """What must never appear in anything medkeras writes: the raw ID and its unkeyed md5 / sha1 / sha256 (hex),
    and the fixed-salt sha256 earlier versions wrote."""
    import hashlib

    out = [patient_id.encode()]
    for name in ("md5", "sha1", "sha256"):
        digest = hashlib.new(name, patient_id.encode()).hexdigest()
        out += [digest.encode(), digest[:16].encode()]
    out.append(hashlib.sha256(("medkeras:" + patient_id).encode()).hexdigest()[:16].encode())
    return out


def assert_no_raw_ids(folder, patient_id: str) -> int:
    """Every file under `folder` is free of the raw ID and its unkeyed hashes; returns how many files were read."""
    traces = raw_id_traces(patient_id)
    files = [p for p in Path(folder).rglob("*") if p.is_file()]
    for path in files:
        data = path.read_bytes()
        for trace in traces:
            assert trace not in data, f"{path} holds {trace!r}"
    return len(files)


@pytest.fixture(scope="session")
def lce_ct(tmp_path_factory):
    """A real Legacy Converted Enhanced CT: the three Lung-PET-CT-Dx slices as one multi-frame file (highdicom), with
    each frame's rescale moved into the per-frame functional groups (frame 2 stored +1024 with intercept -2048)."""
    hd = pytest.importorskip("highdicom", reason="highdicom (the test extra) builds the multi-frame file")
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import generate_uid

    sources = [pydicom.dcmread(LUNG / n) for n in ("1-01.dcm", "1-13.dcm", "1-14.dcm")]  # z -124, -184, -189
    lce = hd.legacy.LegacyConvertedEnhancedCTImage(
        legacy_datasets=sources, series_instance_uid=generate_uid(), series_number=99,
        sop_instance_uid=generate_uid(), instance_number=1,
    )
    frames = lce.pixel_array.astype(np.uint16)
    frames[1] += 1024
    lce.BitsStored, lce.HighBit = 16, 15
    lce.PixelData = frames.tobytes()
    del lce.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence
    for i, item in enumerate(lce.PerFrameFunctionalGroupsSequence):
        transform = Dataset()
        transform.RescaleSlope, transform.RescaleIntercept = 1, -2048 if i == 1 else -1024
        transform.RescaleType = "HU"
        item.PixelValueTransformationSequence = Sequence([transform])
    path = tmp_path_factory.mktemp("lce") / "lce_ct.dcm"
    lce.save_as(path, enforce_file_format=True)
    return path



def write_patients(folder, patients, series_per_patient=1, normal=()):
    """Copies of the three real Lung-PET-CT-Dx slices as other patients' series: PatientID `patients[i]`, new study,
    series and frame-of-reference UIDs (two series of one patient share the frame of reference, as two
    reconstructions of one scan do). Class folders `normal` / `tumour` by the slice's label. Patients in `normal`
    get the normal slice three times instead (moved 5 mm apart), so they are negative at every level. -> paths."""
    import pydicom
    from pydicom.uid import generate_uid

    folder = Path(folder)
    written = []
    for patient in patients:
        study, reference = generate_uid(), generate_uid()
        for s in range(series_per_patient):
            series = generate_uid()
            slices = ((("1-01.dcm", "normal"),) * 3 if patient in normal else
                      (("1-01.dcm", "normal"), ("1-13.dcm", "tumour"), ("1-14.dcm", "tumour")))
            for k, (name, label) in enumerate(slices):
                ds = pydicom.dcmread(LUNG / name)
                if patient in normal:
                    ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], float(ds.ImagePositionPatient[2]) + 5 * k]
                    name = f"{k}-{name}"
                ds.PatientID, ds.PatientName = patient, f"{patient}^Test"
                ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, reference
                ds.SOPInstanceUID = generate_uid()
                path = folder / label / f"{patient}-s{s}-{name}"
                path.parent.mkdir(parents=True, exist_ok=True)
                ds.save_as(path, enforce_file_format=True)
                written.append(path)
    return written


@pytest.fixture(scope="session")
def ct_run(tmp_path_factory):
    """A real CT model: `medkeras fit` on the three Lung-PET-CT-Dx slices (lung window, 32 px), then exported. The
    fit runs beside its manifest, named relatively (`data.source=ct.csv`); the export, which reads the run's
    validation data, runs from another folder."""
    root = tmp_path_factory.mktemp("ct")
    manifest = root / "ct.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "split", "patient_id"])
        for split in ("train", "val", "test"):
            for name, label in (("1-01.dcm", "normal"), ("1-13.dcm", "tumour"), ("1-14.dcm", "tumour")):
                writer.writerow([LUNG / name, label, split, f"P-{split}"])
    run = root / "run"
    result = run_cli(
        "fit", "--out", "run", "--set", "data.source=ct.csv", "--set", "data.window=lung",
        "--set", "data.image_size=32", "--set", "model.backbones=[cnn8_small]", "--set", "train.epochs=1",
        "--set", "train.steps_per_epoch=2", "--set", "train.batch_size=2", "--set", "train.run_eagerly=true",
        "--set", "train.verbose=0", "--set", "eval.bootstrap=0", cwd=root,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    result = run_cli("export", run, "--out", root / "serving", "--name", "ct")
    assert result.returncode == 0, result.stderr[-2000:]
    return run, root / "serving" / "ct" / "1"


SERIES_3 = LUNG / "3.000000-5mm-41315"  # the same positions in the patient's second series (body kernel)
TCIA_STUDY = "04-04-2007-NA-Chest-07990"
TCIA_SERIES = {"2.000000-5mm-40805": LUNG, "3.000000-5mm-41315": SERIES_3}
TCIA_LABELS = {"1-01.dcm": "normal", "1-13.dcm": "tumour", "1-14.dcm": "tumour"}


def tcia_layout(root, second_patient=True) -> list[tuple]:
    """The real slices laid out as TCIA's downloads lay them out, `<patient>/<study>/<series>/1-NN.dcm`: the two
    series of Lung_Dx-A0001 repeat the file names `1-01.dcm`, `1-13.dcm`, `1-14.dcm`, with their own tags. A second
    patient (`second_patient`) holds the same files with PatientID Lung_Dx-A0002 and new study, series and
    frame-of-reference UIDs, in the same layout. -> [(path, label, patient, series folder)]."""
    import pydicom
    from pydicom.uid import generate_uid

    rows = []
    for patient in ["Lung_Dx-A0001"] + (["Lung_Dx-A0002"] if second_patient else []):
        study, reference = generate_uid(), generate_uid()
        for folder, source in TCIA_SERIES.items():
            series = generate_uid()
            for name, label in TCIA_LABELS.items():
                target = Path(root) / patient / TCIA_STUDY / folder / name
                target.parent.mkdir(parents=True, exist_ok=True)
                if patient == "Lung_Dx-A0001":  # the files as the archive serves them
                    import shutil

                    shutil.copy(source / name, target)
                else:
                    ds = pydicom.dcmread(source / name)
                    ds.PatientID, ds.PatientName = patient, f"{patient}^Test"
                    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, reference
                    ds.SOPInstanceUID = generate_uid()
                    ds.save_as(target, enforce_file_format=True)
                rows.append((target, label, patient, folder))
    return rows


def study_source(root, patients: int = 4, positive: str = "tumour", splits: bool = True) -> Path:
    """Real CT studies laid out as TCIA lays them out, `<patient>/<study>/<series>/1-NN.dcm`, and a manifest
    `studies.csv` naming each series folder by its absolute path with its label (and with `splits` its split;
    patients come from the files' PatientID). Each patient (a copy of Lung_Dx-A0001 with its own ID and UIDs) has two
    studies per series: `positive` (the real block 1-13, 1-14 holding the tumour box) and `normal` (the real slice
    1-01). With `splits`, of four patients P1 and P2 train, P3 validates, P4 tests. Every series folder repeats the
    file names of the others."""
    import pydicom
    from pydicom.uid import generate_uid

    root = Path(root)
    rows = []
    for p in range(1, patients + 1):
        patient, split = f"Lung_Dx-B{p:04d}", ("train", "train", "val", "test")[min(p - 1, 3)]
        for label, names in ((positive, ("1-13.dcm", "1-14.dcm")), ("normal", ("1-01.dcm",))):
            study = f"{TCIA_STUDY}-{label}"
            for folder, source in TCIA_SERIES.items():
                series = root / patient / study / folder
                series.mkdir(parents=True)
                uid = generate_uid()
                for name in names:
                    ds = pydicom.dcmread(source / name)
                    ds.PatientID, ds.PatientName = patient, f"{patient}^Test"
                    ds.SeriesInstanceUID, ds.SOPInstanceUID = uid, generate_uid()
                    ds.save_as(series / name, enforce_file_format=True)
                rows.append([series, label, split] if splits else [series, label])
    manifest = root / "studies.csv"
    with open(manifest, "w", newline="") as fh:
        csv.writer(fh).writerows([["path", "label", *(["split"] if splits else [])], *rows])
    return manifest


@pytest.fixture(scope="session")
def study_run(tmp_path_factory):
    """A real CT study model: `medkeras fit` of a series model (gated attention over 4 slices of 32 px, three windows) on
    `study_source`'s TCIA-laid-out series, run from another folder, then exported. -> (run, export, manifest)."""
    root = tmp_path_factory.mktemp("study")
    manifest = study_source(root / "ct")
    result = run_cli(
        "fit", "--out", root / "run", "--set", f"data.source={manifest}",
        "--set", "data.window=[lung, mediastinum, bone]",  # three windows: the channels as they are, no repeat
        "--set", "data.image_size=32", "--set", "data.volume_size=[4, 32, 32]", "--set", "model.input=series",
        "--set", "model.backbones=[cnn8_small]", "--set", "train.epochs=1", "--set", "train.batch_size=2",
        "--set", "train.verbose=0", "--set", "eval.bootstrap=0", cwd=tmp_path_factory.mktemp("elsewhere"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    result = run_cli("export", root / "run", "--out", root / "serving", "--name", "study")
    assert result.returncode == 0, result.stderr[-2000:]
    return root / "run", root / "serving" / "study" / "1", manifest
