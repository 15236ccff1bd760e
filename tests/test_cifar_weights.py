"""The CIFAR ResNets people already have (akamaster/pytorch_resnet_cifar10's `.th` files), and
weight files that cannot load into the wrong architecture.

The PyTorch reference is that repository's architecture written here (He et al.'s basic
block, option A: every other pixel, zero channels on both sides; `linear` classifier), run in
a subprocess in float64. It writes random networks (BN moved off the identity) as that
repository saves them: `torch.save({"state_dict": ..., "best_prec1": ...})` of a
DataParallel model (keys prefixed `module.`), the legacy serialization, a `.th` name.
tests/data/akamaster holds the published ResNet-20 (BSD-2-Clause, see its README).
"""

import hashlib
import importlib.util
import json
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest

import keras_resnet as kr
from conftest import CIFAR_DIR, ROOT, run_python
from keras_resnet import architecture, converters, registry, weights as weights_lib

PUBLISHED = ROOT / "tests" / "data" / "akamaster"
MEAN, STD = np.array([0.485, 0.456, 0.406]) * 255, np.array([0.229, 0.224, 0.225]) * 255

REFERENCE = r"""
import json, sys
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = (cout - cin) // 2 if stride != 1 or cin != cout else None

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        short = x if self.pad is None else F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(out + short)


class Net(nn.Module):
    def __init__(self, n, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        widths = [(16, 16, 1), (16, 32, 2), (32, 64, 2)]
        for i, (cin, cout, stride) in enumerate(widths, 1):
            blocks = [Block(cin, cout, stride)] + [Block(cout, cout, 1) for _ in range(n - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.linear = nn.Linear(64, classes)

    def forward(self, x):
        out = self.layer3(self.layer2(self.layer1(F.relu(self.bn1(self.conv1(x))))))
        return self.linear(F.avg_pool2d(out, out.size()[3]).flatten(1))


mode, folder = sys.argv[1], sys.argv[2]
x = torch.from_numpy(np.load(f"{folder}/x.npy").transpose(0, 3, 1, 2))  # normalized, float64
if mode == "make":  # random networks, saved as the repository saves its checkpoints
    g = torch.Generator().manual_seed(0)
    for depth in json.loads(sys.argv[3]):
        net = Net((depth - 2) // 6)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.data.uniform_(0.5, 1.5, generator=g)
                m.bias.data.normal_(0, 0.2, generator=g)
                m.running_mean.normal_(0, 0.2, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
        state = {f"module.{k}": v for k, v in net.state_dict().items()}
        torch.save({"epoch": 200, "state_dict": state, "best_prec1": 91.5}, f"{folder}/resnet{depth}.th",
                   _use_new_zipfile_serialization=False)
        torch.save(net.state_dict(), f"{folder}/resnet{depth}-plain")  # zip format, no suffix
        np.save(f"{folder}/resnet{depth}.npy", net.double().eval()(x).detach().numpy())
else:  # a published file in this architecture
    state = torch.load(sys.argv[3], map_location="cpu", weights_only=True)["state_dict"]
    net = Net(3)
    net.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    np.save(f"{folder}/published.npy", net.double().eval()(x).detach().numpy())
"""


def torch_reference(*args) -> None:
    if importlib.util.find_spec("torch") is None:
        pytest.fail("The PyTorch reference needs torch (the test extra installs it).", pytrace=False)
    result = subprocess.run([sys.executable, "-c", REFERENCE, *map(str, args)], capture_output=True, text=True,
                            cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def images():
    """CIFAR-10 test pixels (uint8-valued float32) and the same normalized, as their trainer feeds them."""
    files = sorted((CIFAR_DIR / "test").glob("*/*.*"))[::250][:32]
    pixels = np.stack([keras.utils.img_to_array(keras.utils.load_img(f)) for f in files])
    return pixels, (pixels - MEAN) / STD


@pytest.fixture(scope="module")
def made(tmp_path_factory, images):
    folder = tmp_path_factory.mktemp("akamaster")
    np.save(folder / "x.npy", images[1])
    torch_reference("make", folder, json.dumps([20, 32]))
    return folder


def relative(expected: np.ndarray, got: np.ndarray) -> float:
    return float(np.abs(expected - got).max() / np.abs(expected).max())


@pytest.mark.parametrize("depth", [20, 32])
def test_their_checkpoint_format_converts_exactly(made, images, depth):
    """The wrapped, prefixed legacy `.th` checkpoint and a plain zip state dict without a
    suffix are both read by content and give their model's logits."""
    expected = np.load(made / f"resnet{depth}.npy")
    for name in (f"resnet{depth}.th", f"resnet{depth}-plain"):
        checkpoint = converters.read(made / name)
        assert checkpoint.layout == "torch" and checkpoint.num_classes == 10
        assert converters.fitting_models(checkpoint) == [f"resnet{depth}_cifar"]
        model = kr.build(depth, weights=str(made / name))
        got = keras.ops.convert_to_numpy(model(images[1].astype("float32"), training=False))
        assert relative(keras.ops.convert_to_numpy(keras.ops.softmax(expected)), got) < 1e-5, name


def test_the_published_resnet20_loads_by_its_record_with_its_preprocessing(images, tmp_path, made):
    """By name through a mirror (its SHA-256 checked), preprocessing inside: the model takes
    pixels and gives their network's probabilities; the record names CIFAR-10's classes."""
    torch_reference("published", made, PUBLISHED / "resnet20-12fca82f.th")
    code = (
        "import numpy as np, keras, keras_resnet as kr\n"
        "m = kr.build('resnet20_cifar', weights='akamaster_cifar10', include_preprocessing=True)\n"
        f"np.save({str(tmp_path / 'got.npy')!r}, m.predict(np.load({str(made / 'pixels.npy')!r}), verbose=0))\n"
    )
    np.save(made / "pixels.npy", images[0])
    result = run_python(code, env={"KERAS_RESNET_WEIGHTS_URL": PUBLISHED.as_uri(), "KERAS_HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    expected = keras.ops.convert_to_numpy(keras.ops.softmax(np.load(made / "published.npy")))
    assert relative(expected, np.load(tmp_path / "got.npy")) < 1e-5
    record = registry.WEIGHTS["resnet20_cifar.akamaster_cifar10"]
    assert record.class_names[0] == "airplane" and len(record.class_names) == record.num_classes == 10
    assert record.needs_torch and record.dataset == "CIFAR-10" and record.top1 == 91.73


def test_a_wrong_depth_classes_variant_or_damaged_file_is_refused_in_one_line(made, tmp_path):
    path = str(made / "resnet20.th")
    with pytest.raises(ValueError, match=r"does not fit this model at key 'layer1\.3\.conv1\.weight'.*"
                                         r"It fits: resnet20_cifar\."):
        kr.build(32, weights=path)
    with pytest.raises(ValueError, match=r"has 10 classes, got num_classes=100\. Use include_top=False"):
        kr.build(20, weights=path, num_classes=100)
    with pytest.raises(ValueError, match=r"holds variant='cifar' networks, not variant='v1\.5'"):
        kr.build(20, variant="v1.5", weights=path)
    cut = tmp_path / "cut.th"
    cut.write_bytes((made / "resnet20.th").read_bytes()[:50_000])
    with pytest.raises(ValueError, match=r"cut\.th' is truncated or corrupt"):
        kr.build(20, weights=str(cut))
    keras_file = tmp_path / "m.keras"
    kr.build(8, variant="cifar").save(keras_file)
    with pytest.raises(ValueError, match=r"is a whole Keras model \(\.keras\), not a weight file"):
        kr.build(8, variant="cifar", weights=str(keras_file))


def test_a_file_whose_hash_is_not_the_published_one_is_removed(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    data = bytearray((PUBLISHED / "resnet20-12fca82f.th").read_bytes())
    data[-100] ^= 1
    (mirror / "resnet20-12fca82f.th").write_bytes(bytes(data))
    result = run_python(
        "import keras_resnet as kr\n"
        "try:\n    kr.build('resnet20_cifar', weights='akamaster_cifar10')\n"
        "except OSError as e:\n    print('ERROR', e)\n",
        env={"KERAS_RESNET_WEIGHTS_URL": mirror.as_uri(), "KERAS_HOME": str(tmp_path / "home")})
    assert f"its sha256 hash is {hashlib.sha256(bytes(data)).hexdigest()}" in result.stdout, result.stderr[-2000:]
    assert not (tmp_path / "home" / "models" / "resnet20-12fca82f.th").exists()


def test_the_weights_command_says_which_files_need_pytorch(capsys):
    from keras_resnet import cli

    assert cli.main(["weights", "resnet56_cifar"]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split()[:4] == ["weights", "source", "data", "top-1"]
    assert row.split()[:4] == ["resnet56_cifar.akamaster_cifar10", "akamaster/pytorch_resnet_cifar10", "CIFAR-10",
                               "93.39"] and "PyTorch" in row


# -- .weights.h5 files that record their architecture ---------------------------------------------

def snapshot(model) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(v).copy() for v in model.weights]


@pytest.mark.parametrize("saved, loaded, message", [
    (dict(depth=50, variant="v1"), dict(depth=50, variant="v1.5"),
     r"layer 'conv2_block1' differs in stride_on \('1x1' there, '3x3' here\)"),
    (dict(depth=18), dict(depth=18, shortcut="avgpool"),
     r"layer 'conv2_block1' differs in shortcut \('projection' there, 'avgpool' here\)"),
])
def test_a_weights_file_of_another_architecture_with_the_same_variables_is_refused(tmp_path, saved, loaded, message):
    path = str(tmp_path / "saved.weights.h5")
    kr.save_weights(kr.build(**saved), path)
    assert architecture.marked(path) is not None
    target = kr.build(**loaded)
    before = snapshot(target)
    with pytest.raises(ValueError, match=r"was saved from another architecture: " + message + r"\. Nothing was loaded"):
        weights_lib.load_weights(target, path)
    assert all(np.array_equal(a, b) for a, b in zip(before, snapshot(target)))
    with pytest.raises(ValueError, match=message):
        kr.build(**loaded, weights=path)
    same = kr.build(**saved, weights=path)  # its own architecture loads
    assert len(same.weights) == len(target.weights)


def test_a_weights_file_without_its_architecture_loads_with_one_warning(tmp_path):
    source = kr.build(18)
    path = str(tmp_path / "keras.weights.h5")
    source.save_weights(path)  # Keras's own: no architecture recorded
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = kr.build(18, shortcut="avgpool", weights=path)
    said = [str(w.message) for w in caught if "does not record its architecture" in str(w.message)]
    assert len(said) == 1 and "only its variables' names and shapes were checked" in said[0]
    assert all(np.array_equal(a, b) for a, b in zip(snapshot(source), snapshot(loaded)))


def test_checkpoints_and_exported_weights_record_the_architecture(trained_run, tmp_path):
    folder = trained_run[0]
    newest = sorted((folder / "checkpoints").glob("epoch-*.weights.h5"))[-1]
    recorded = architecture.marked(newest)
    model = keras.models.load_model(folder / "model.keras")
    assert architecture.difference(recorded, architecture.describe(model)) is None
    out = tmp_path / "m.weights.h5"
    kr.export(folder / "model.keras", "weights", out, log=lambda _: None)
    assert architecture.marked(out) == architecture.describe(model)


def test_a_pytorch_file_without_pytorch_is_one_line_from_the_cli(tmp_path):
    """`train --weights` on a record that needs PyTorch, where it is not installed."""
    code = (
        "import sys\nsys.modules['torch'] = None  # as if PyTorch were not installed\n"
        "from keras_resnet import cli\n"
        f"sys.exit(cli.main(['train', '--weights', 'resnet20_cifar.akamaster_cifar10', '--data', {str(CIFAR_DIR)!r}, "
        f"'--epochs', '1', '--output', {str(tmp_path / 'run')!r}]))\n"
    )
    result = run_python(code, env={"KERAS_RESNET_WEIGHTS_URL": PUBLISHED.as_uri(), "KERAS_HOME": str(tmp_path)})
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last == ("keras-resnet train: error: weights='resnet20_cifar.akamaster_cifar10' is a PyTorch .th file, "
                    "which needs PyTorch: pip install 'keras-resnet-family[torch]'.")


def test_a_timm_records_bicubic_resize_is_what_evaluation_and_serving_use(tmp_path):
    """A model fine-tuned from a timm record (its run's config.json names it) is evaluated,
    predicted and served with the bicubic resize timm measured its top-1 with."""
    import tensorflow as tf

    from keras_resnet import evaluation

    model = kr.build(8, variant="cifar")
    model.save(tmp_path / "model.keras")
    config = {"model": {"weights": "resnet18.a1_in1k"}, "data": {"name": "cifar10", "eval_crop_fraction": 0.0}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    prep = evaluation.preprocessing_for(model, tmp_path / "model.keras")
    assert prep.describe() == {"image_size": [32, 32], "crop_fraction": None, "interpolation": "bicubic"}
    image = np.random.default_rng(0).integers(0, 256, (50, 70, 3)).astype(np.float32)
    got = prep(image).numpy()
    np.testing.assert_allclose(got, tf.image.resize(image, (32, 32), method="bicubic").numpy(), atol=1e-4)
    assert np.abs(got - tf.image.resize(image, (32, 32), method="bilinear").numpy()).max() > 1
    assert registry.interpolation_for("resnet50.tv_in1k") == "bilinear" and registry.interpolation_for("") == "bilinear"
