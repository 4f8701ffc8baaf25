"""Shared fixtures: real data only (the bundled BreastMNIST, pydicom's CT_small, three Lung-PET-CT-Dx slices in
`fixtures/`), the files users have made from them (other sizes and encodings), and the runs and exports the
CLI, evaluation and export tests share."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FIXTURES = Path(__file__).parent / "fixtures"
LUNG = FIXTURES / "lung_pet_ct_dx_A0001"


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


def run_cli(*args, timeout=600):
    """Run the real `medkeras` entry point in a subprocess: exit status, stdout and stderr as a user sees them."""
    return subprocess.run(
        [sys.executable, "-m", "medkeras", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


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
