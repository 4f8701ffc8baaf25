"""PyTorch -> Keras weight conversion: logits equal to PyTorch's on real images, and every published key fits.

Fixtures (tests/fixtures/convert, made once by its generate.py with torch, torchvision and timm): reduced-width
models built with torchvision's / timm's own classes, random weights and BatchNorm statistics, run on a real CT
slice and a real RGB ultrasound frame at 80 px; keys.json holds the full published architectures' key names and
shapes (torchvision resnet18/34, vgg19_bn; timm regnety_040/080, convnextv2 atto/nano/tiny/base).
"""

import json
from pathlib import Path

import numpy as np
import pytest

from medkeras.errors import ConfigError, MedkerasError
from medkeras.models import build_backbone
from medkeras.models.checkpoints import read_state_dict
from medkeras.models.convert import FAMILIES, convert_weights, load_state_dict

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "convert"
SIZE = 80
VGG_CONFIG = (4, 4, "M", 8, 8, "M", 16, 16, 16, 16, "M", 32, 32, 32, 32, "M", 32, 32, 32, 32, "M")


def _reduced(name):
    shape = (SIZE, SIZE, 3)
    if name == "resnet34":
        from medkeras.models.resnet import basic_resnet

        return basic_resnet(shape, blocks=(3, 4, 6, 3), widths=(4, 8, 16, 32), name="resnet34"), "resnet"
    if name == "vgg19_bn":
        from medkeras.models.vgg import vgg_bn

        return vgg_bn(shape, config=VGG_CONFIG, fc_units=16), "vgg"
    if name == "regnety":
        from medkeras.models.regnet import regnety

        return regnety(shape, variant=(6, 8, 8.0, 2.0, 8)), "regnet"
    from medkeras.models.convnextv2 import convnextv2

    return convnextv2(shape, variant=((1, 1, 2, 1), (8, 16, 32, 64))), "convnext"


CHECKPOINTS = {"resnet34": "resnet34.pth", "vgg19_bn": "vgg19_bn.pth", "regnety": "regnety.safetensors",
               "convnextv2": "convnextv2.safetensors"}
CLASSIFIER = {"resnet34": "fc", "vgg19_bn": "classifier.6", "regnety": "head.fc", "convnextv2": "head.fc"}


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_converted_model_gives_pytorch_logits_on_real_images(name):
    """resnet34: torchvision zip .pth; vgg19_bn: legacy (torch < 1.6) .pth; RegNetY / ConvNeXt V2: timm safetensors."""
    state = read_state_dict(FIXTURES / CHECKPOINTS[name])
    model, family = _reduced(name)
    report = load_state_dict(model, state, family)
    assert report.dropped == [f"{CLASSIFIER[name]}.bias", f"{CLASSIFIER[name]}.weight"]
    x = np.load(FIXTURES / "images.npz")["x"]
    expected = np.load(FIXTURES / f"{name}.npz")
    features = np.asarray(model(x, training=False))
    logits = features @ state[f"{CLASSIFIER[name]}.weight"].T + state[f"{CLASSIFIER[name]}.bias"]
    scale = np.abs(expected["logits"]).max()
    assert np.abs(features - expected["features"]).max() <= 1e-4 * max(1.0, np.abs(expected["features"]).max())
    assert np.abs(logits - expected["logits"]).max() <= 1e-4 * max(1.0, scale)
    # the two real images differ, so a swapped channel or axis could not hide behind identical rows
    assert np.abs(expected["logits"][0] - expected["logits"][1]).max() > 0.1 * scale


def test_adaptive_pool_is_pytorchs():
    from medkeras.models.vgg import AdaptiveAveragePooling2D

    cases = np.load(FIXTURES / "adaptive.npz")
    for size in (2, 3, 5, 7, 10, 13, 14):
        got = np.asarray(AdaptiveAveragePooling2D(7)(cases[f"in_{size}"]))
        np.testing.assert_allclose(got, cases[f"out_{size}"], atol=1e-6)


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "vgg19_bn", "regnety_4gf", "convnextv2_tiny",
                                  "convnextv2_atto"])
def test_published_key_layouts_fill_every_weight(arch, tmp_path):
    """A state dict with the published architecture's names and shapes fills the full-size Keras backbone: every
    tensor but the classifier is used, every Keras weight filled, and the result loads through model.weights."""
    layout, state, checkpoint = _published_checkpoint(arch, tmp_path)
    out = tmp_path / f"{arch}.weights.h5"
    report = convert_weights(arch, checkpoint, out)
    counted = sum(int(np.prod(s)) for k, s in layout.items() if not k.endswith("num_batches_tracked"))
    assert report.parameters == counted - sum(int(np.prod(layout[k])) for k in report.dropped)
    assert report.dropped and all(k.startswith(("fc.", "classifier.6.", "head.fc.")) for k in report.dropped)


def _published_checkpoint(arch, folder):
    from safetensors.numpy import save_file

    layout = json.loads((FIXTURES / "keys.json").read_text())[arch]
    rng = np.random.default_rng(0)
    state = {k: rng.standard_normal(shape).astype("float32") if shape else np.array(0) for k, shape in layout.items()}
    checkpoint = folder / f"{arch}.safetensors"
    save_file(state, str(checkpoint))
    return layout, state, checkpoint


def test_cli_converts_and_model_weights_loads_it(tmp_path):
    """`medkeras convert-weights` as a user runs it; the file then loads through model.weights at another size."""
    from conftest import run_cli

    _, state, checkpoint = _published_checkpoint("resnet18", tmp_path)
    out = tmp_path / "weights" / "resnet18.weights.h5"
    result = run_cli("convert-weights", "resnet18", checkpoint, "--out", out)
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}: 100 tensors, 11.2M parameters of resnet18" in result.stdout
    assert "left out the classifier (fc.bias, fc.weight)" in result.stdout
    model = build_backbone("resnet18", 64, weights=str(out))
    np.testing.assert_array_equal(model.get_layer("stage4_block2_bn2").moving_variance.numpy(),
                                  state["layer4.1.bn2.running_var"])
    np.testing.assert_array_equal(model.get_layer("stem_conv").kernel.numpy(),
                                  state["conv1.weight"].transpose(2, 3, 1, 0))
    wrong = run_cli("convert-weights", "resnet34", checkpoint, "--out", tmp_path / "r34.weights.h5")
    assert wrong.returncode == 1 and wrong.stderr.count("\n") == 1, wrong.stderr
    assert "no tensor 'layer1.2.conv1.weight'" in wrong.stderr
    assert not (tmp_path / "r34.weights.h5").exists()


def test_wrong_checkpoints_are_one_line(tmp_path):
    state = read_state_dict(FIXTURES / "resnet34.pth")  # a reduced ResNet34
    with pytest.raises(MedkerasError, match=r"'conv1.weight' has shape \(4, 3, 7, 7\).*needs \(7, 7, 3, 64\)"):
        load_state_dict(build_backbone("resnet34", 64), state, "resnet")
    with pytest.raises(MedkerasError, match="tensors this architecture does not have: layer1.2"):
        from medkeras.models.resnet import basic_resnet

        load_state_dict(basic_resnet((64, 64, 3), blocks=(2, 2, 2, 2), widths=(4, 8, 16, 32)), state, "resnet")
    with pytest.raises(MedkerasError, match=r"no tensor 'stem.0.weight'.*timm convnextv2"):
        load_state_dict(_reduced("convnextv2")[0], state, "convnext")
    with pytest.raises(ConfigError, match="no PyTorch checkpoint layout for 'efficientnetb0'"):
        convert_weights("efficientnetb0", FIXTURES / "resnet34.pth", tmp_path / "x.weights.h5")
    with pytest.raises(ConfigError, match="must end in .weights.h5"):
        convert_weights("resnet34", FIXTURES / "resnet34.pth", tmp_path / "x.h5")
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(MedkerasError, match="broken.pth: cannot read as a PyTorch checkpoint"):
        read_state_dict(bad)
    assert not list(tmp_path.glob("*.weights.h5"))
    assert set(FAMILIES) <= set(json.loads((FIXTURES / "keys.json").read_text())) | {"convnextv2_nano",
                                                                                    "convnextv2_base", "regnety_8gf"}


def test_scalars_and_bfloat16_are_read(tmp_path):
    """0-d tensors of a .pth (BatchNorm's num_batches_tracked) come back as arrays; bfloat16 safetensors (numpy has
    no bfloat16) are widened to float32 exactly."""
    import struct

    state = read_state_dict(FIXTURES / "resnet34.pth")
    assert state["bn1.num_batches_tracked"].shape == () and state["bn1.num_batches_tracked"].dtype == np.int64
    values = np.array([[0.5, -2.0, 3.0], [1.0, 0.0, -0.25]], "float32")  # exact in bfloat16
    raw = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    header = json.dumps({"w": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, len(raw)]}}).encode()
    path = tmp_path / "bf16.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + raw)
    np.testing.assert_array_equal(read_state_dict(path)["w"], values)


def test_unpickler_refuses_code(tmp_path):
    """A .pth whose pickle names anything but tensors and dicts is refused, never run (as weights_only=True)."""
    import pickle
    import zipfile

    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps({"x": Evil()}))
    with pytest.raises(MedkerasError, match="refusing to load builtins.print"):
        read_state_dict(path)
