"""Shared fixtures: real data only (the bundled BreastMNIST, pydicom's CT_small, three Lung-PET-CT-Dx slices)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DATA = Path(__file__).parent / "data"
LUNG = DATA / "lung_pet_ct_dx_A0001"


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
