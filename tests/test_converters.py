"""Exact conversion of torchvision/timm state dicts, proven against the PyTorch originals.

The references (torchvision and timm, random init, BN statistics set to non-trivial
values, eval mode) are built and run in a subprocess: importing torchvision after
TensorFlow crashes in this environment (triton), and pytest imports TensorFlow first.
The subprocess writes each reference's float32 state dict as .safetensors and .pth, and
its logits, pooled features and (ResNet-50) timm `features_only` maps for the same images,
computed in float64 so that the comparison measures our float32 rounding alone.
"""

import importlib.util
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_resnet as kr
from conftest import ROOT, run_python, small_cifar_folder
from keras_resnet import converters, registry



def require_references() -> None:
    """Fail (never skip) where the PyTorch references cannot be built."""
    missing = [m for m in ("torch", "torchvision", "timm", "safetensors") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.fail(f"The PyTorch references need {', '.join(missing)}: pip install torch==2.14.1 "
                    "torchvision==0.29.1 timm==1.0.31 (as .ci/run does).", pytrace=False)


SIZE = 64
# (registry name, reference constructor): each family once at its smallest depth, plus ResNet-50.
FAMILIES = {
    "resnet18": "torchvision.models.resnet18()",
    "resnet50": "torchvision.models.resnet50()",
    "resnext50_32x4d": "torchvision.models.resnext50_32x4d()",
    "wide_resnet50_2": "torchvision.models.wide_resnet50_2()",
    "resnet18d": "timm.create_model('resnet18d')",
    "resnet50d": "timm.create_model('resnet50d')",
    "seresnet50": "timm.create_model('seresnet50')",
}
TORCH_MODELS = [name for name, entry in registry.MODELS.items() if entry.variant in ("v1.5", "v1d")]

# The references' common part: random init, BN moved off the identity, eval mode, float64.
REFERENCE_SETUP = r"""
import json, sys
import numpy as np
import torch, torchvision, timm
from safetensors.torch import save_file

folder, families = sys.argv[1], json.loads(sys.argv[2])
torch.manual_seed(0)
g = torch.Generator().manual_seed(0)
images = np.load(f"{folder}/images.npy")
mean, std = np.array([0.485, 0.456, 0.406]) * 255, np.array([0.229, 0.224, 0.225]) * 255
x = torch.from_numpy(((images - mean) / std).transpose(0, 3, 1, 2))  # float64

def perturb(model):
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
        bn.weight.data.uniform_(0.5, 1.5, generator=g)
        bn.bias.data.normal_(0, 0.2, generator=g)
        bn.momentum = None  # cumulative average: one batch sets the statistics
        bn.reset_running_stats()
    model.train()
    with torch.no_grad():  # statistics of the test images keep the activations in a sane range
        model(x.float())
    for bn in bns:  # then move them off the batch's, so no BN is an identity
        bn.running_mean.add_(0.2 * bn.running_var.sqrt() * torch.randn(bn.running_mean.shape, generator=g))
        bn.running_var.mul_(torch.empty(bn.running_var.shape).uniform_(0.5, 2.0, generator=g))
    return model.eval()

def save(model, name):
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, f"{folder}/{name}.safetensors")
    torch.save(state, f"{folder}/{name}.pth")
    return state
"""

REFERENCE_SCRIPT = REFERENCE_SETUP + r"""
out = {}
for name, make in families.items():
    model = perturb(eval(make))
    state = save(model, name)
    with torch.no_grad():  # the reference computes in float64, so only our float32 rounding counts
        model.double()
        out[f"{name}/logits"] = model(x).numpy()
        model.fc = torch.nn.Identity()
        out[f"{name}/pooled"] = model(x).numpy()
        if name == "resnet50":
            features = timm.create_model("resnet50", features_only=True, out_indices=(1, 2, 3, 4)).eval()
            features.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")})
            for i, p in enumerate(features.double()(x), 2):
                out[f"resnet50/P{i}"] = p.numpy()
half = torch.randn(3, 5, generator=g).bfloat16()
save_file({"module.w": half}, f"{folder}/bf16.safetensors")  # as saved from DataParallel
torch.save({"state_dict": {"w": half}, "epoch": 3}, f"{folder}/bf16.pth")  # a training checkpoint
out["bf16"] = half.float().numpy()
np.savez(f"{folder}/reference.npz", **out)
shapes = {}
for name in json.loads(sys.argv[3]):
    with torch.device("meta"):
        shapes[name] = {k: list(v.shape) for k, v in timm.create_model(name).state_dict().items()}
with open(f"{folder}/shapes.json", "w") as f:
    json.dump(shapes, f)
"""


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cifar_images):
    """(folder of .safetensors/.pth files, reference outputs, {model: {key: shape}}, images)."""
    require_references()
    folder = tmp_path_factory.mktemp("torch")
    images = cifar_images[:4].repeat(2, axis=1).repeat(2, axis=2)  # 64x64 real images
    np.save(folder / "images.npy", images)
    result = run_python(f"import sys; sys.argv = ['ref', {str(folder)!r}, {json.dumps(FAMILIES)!r}, "
                        f"{json.dumps(TORCH_MODELS)!r}]\n" + REFERENCE_SCRIPT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(folder / "shapes.json") as f:
        shapes = json.load(f)
    return folder, dict(np.load(folder / "reference.npz")), shapes, images


def _relative(expected, got):
    return float(np.abs(expected - got).max() / np.abs(expected).max())


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_logits_and_features_match_the_pytorch_reference(reference, name, fmt):
    folder, outputs, _, images = reference
    path = str(folder / f"{name}.{fmt}")
    x = keras.ops.convert_to_numpy(kr.preprocess_input(images, "torch"))
    top = kr.build(name, weights=path, input_shape=(SIZE, SIZE, 3), classifier_activation=None)
    assert _relative(outputs[f"{name}/logits"], top.predict(x, verbose=0)) <= 1e-4
    headless = kr.build(name, weights=path, include_top=False, pooling="avg", input_shape=(SIZE, SIZE, 3))
    assert _relative(outputs[f"{name}/pooled"], headless.predict(x, verbose=0)) <= 1e-4


def test_pyramid_outputs_match_timm_features_only(reference):
    folder, outputs, _, images = reference
    backbone = kr.build("resnet50", weights=str(folder / "resnet50.safetensors"), include_top=False,
                        pyramid_outputs=True, include_preprocessing=True)
    got = backbone.predict(images, verbose=0)  # raw pixels: the torch normalization is inside
    assert sorted(got) == ["P2", "P3", "P4", "P5"]
    for key, maps in got.items():
        assert _relative(outputs[f"resnet50/{key}"].transpose(0, 2, 3, 1), maps) <= 1e-4, key


def _zeros(shapes: dict) -> dict:
    return {k: np.broadcast_to(np.float32(0), tuple(s)) for k, s in shapes.items()}


def test_each_registry_name_is_the_architecture_timm_builds_under_it(reference):
    """A state dict of timm's model of that name fits that registry name, and no other."""
    for name, shapes in reference[2].items():
        checkpoint = converters.Checkpoint(name, "torch", _zeros(shapes), converters.TORCH_BN_EPSILON)
        assert converters.fitting_models(checkpoint) == [name]


OTHERS = [name for name in TORCH_MODELS if name not in FAMILIES]
OTHERS_SCRIPT = REFERENCE_SETUP + r"""
out = {}
for name in families:
    model = perturb(timm.create_model(name))
    save(model, name)
    with torch.no_grad():
        out[name + "/float32"] = model(x.float()).numpy()
        out[name] = model.double()(x).numpy()
    del model
np.savez(f"{folder}/reference.npz", **out)
"""


@pytest.fixture(scope="module")
def others(tmp_path_factory, reference):
    """Every other torchvision/timm architecture of the registry, as timm builds it under that
    name: (folder of .safetensors/.pth files, reference logits)."""
    folder = tmp_path_factory.mktemp("torch_others")
    np.save(folder / "images.npy", reference[3])
    result = run_python(f"import sys; sys.argv = ['ref', {str(folder)!r}, {json.dumps(OTHERS)!r}]\n"
                        + OTHERS_SCRIPT, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder, dict(np.load(folder / "reference.npz"))


@pytest.mark.parametrize("name", OTHERS)
def test_every_other_registry_model_matches_its_timm_reference(others, reference, name):
    """The architectures not compared above, each from both file formats: logits within 1e-4
    of timm's model of that name in float64 (the classifier and the pooled features share
    every layer but the last, which the families above check both ways). Over 200 layers
    float32 itself strays further: PyTorch's own float32 logits of ResNet-200 differ from
    its float64 ones by about 1.5e-4. There the bound is 1.5x PyTorch's own float32 error."""
    folder, outputs = others
    bound = max(1e-4, 1.5 * _relative(outputs[name], outputs[f"{name}/float32"]))
    x = keras.ops.convert_to_numpy(kr.preprocess_input(reference[3], "torch"))
    model = kr.build(name, weights=str(folder / f"{name}.safetensors"), input_shape=(SIZE, SIZE, 3),
                     classifier_activation=None)
    assert _relative(outputs[name], model.predict(x, verbose=0)) <= bound
    for w in model.weights:
        w.assign(np.zeros(w.shape, w.dtype))
    converters.load(model, converters.read(folder / f"{name}.pth"))
    assert _relative(outputs[name], model.predict(x, verbose=0)) <= bound
    for fmt in ("safetensors", "pth"):  # up to 0.5 GB each
        (folder / f"{name}.{fmt}").unlink()
    keras.backend.clear_session()


def _snapshot(model):
    return [w.numpy().copy() for w in model.weights]


def test_file_for_another_architecture_is_refused_before_anything_is_assigned(reference):
    folder = reference[0]
    model = kr.build("resnet50", input_shape=(SIZE, SIZE, 3))
    before = _snapshot(model)
    with pytest.raises(ValueError, match=r"at key 'layer1\.0\.conv1\.weight': the file has shape \(64, 64, 3, 3\), "
                                         r"the model expects \(64, 64, 1, 1\)\. It fits: resnet18\.$"):
        kr.load_weights(model, str(folder / "resnet18.safetensors"))
    deeper = kr.build("resnet101", input_shape=(SIZE, SIZE, 3))
    with pytest.raises(ValueError, match=r"at key 'layer3\.6\.conv1\.weight': missing from the file .* "
                                         r"It fits: resnet50\.$"):
        kr.load_weights(deeper, str(folder / "resnet50.pth"))
    with pytest.raises(ValueError, match=r"'conv1\.weight': missing .* It fits: resnet50d\.$"):
        kr.build("resnet50", weights=str(folder / "resnet50d.safetensors"))
    assert all(np.array_equal(a, b) for a, b in zip(before, _snapshot(model)))


def test_variant_and_classes_are_checked_against_the_file(reference):
    folder = reference[0]
    path = str(folder / "resnet50.safetensors")
    with pytest.raises(ValueError, match=r"holds v1\.5 or ResNet-D \(v1d\) networks, not variant='v1'"):
        kr.build(50, variant="v1", weights=path)
    v1 = kr.models.ResNet50(keras.Input((SIZE, SIZE, 3)))  # old API: v1
    with pytest.raises(ValueError, match=r"holds a torchvision/timm network .* this model strides on the 1x1"):
        kr.load_weights(v1, path)
    with pytest.raises(ValueError, match=r"has 1000 classes, got num_classes=10\. Use include_top=False"):
        kr.build("resnet50", weights=path, num_classes=10)
    assert kr.build(50, weights=path, input_shape=(SIZE, SIZE, 3)).output_shape == (None, 1000)
    # A larger epsilon folds into the variances only where they exceed the difference.
    zero_variances = converters.Checkpoint("zeros", "torch", _zeros(reference[2]["resnet18"]), 1e-5)
    with pytest.raises(ValueError, match=r"'zeros' at bn1: bn_epsilon=1\.001e-05 is larger than the file's 1e-05 by "
                                         r"more than a variance, so it cannot fold exactly; build with "
                                         r"bn_epsilon=1e-05\.$"):
        converters.plan(kr.build("resnet18", bn_epsilon=1.001e-5), zero_variances)


def test_bfloat16_wrapped_and_prefixed_state_dicts_are_read(reference):
    """bfloat16 widens exactly to float32; a training checkpoint's "state_dict" and
    DataParallel's "module." prefix are unwrapped."""
    folder, outputs = reference[0], reference[1]
    for fmt in ("safetensors", "pth"):
        array = converters.read(folder / f"bf16.{fmt}").arrays["w"]
        assert array.dtype == np.float32 and np.array_equal(array, outputs["bf16"])


def test_truncated_and_corrupt_files_are_one_clear_line(reference, tmp_path):
    folder = reference[0]
    for fmt in ("safetensors", "pth"):
        data = (folder / f"resnet18.{fmt}").read_bytes()
        cut = tmp_path / f"cut.{fmt}"
        cut.write_bytes(data[: len(data) // 2])
        with pytest.raises(ValueError, match=r"cut\.\w+' is truncated or corrupt.*; download or save it again\.$"):
            kr.build("resnet18", weights=str(cut))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(ValueError, match=r"truncated or corrupt \(unreadable header"):
        converters.read(garbage)


def test_pth_without_pytorch_names_the_extra_and_safetensors(reference):
    """A local .pth, and a .pth record before its download, each get one line naming the fix."""
    path = str(reference[0] / "resnet18.pth")
    result = run_python(
        "import sys\nsys.modules['torch'] = None  # as if PyTorch were not installed\n"
        "import keras_resnet as kr\n"
        f"for weights in ({path!r}, 'resnet18.tv_in1k'):\n"
        "    try:\n        kr.build('resnet18', weights=weights, include_top=False)\n"
        "    except ImportError as e:\n        print('ERROR', e)\n")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines() == [
        f"ERROR Reading {path!r} needs PyTorch: pip install 'keras-resnet-family[torch]' (or save the "
        "state dict as .safetensors, which loads without it).",
        "ERROR weights='resnet18.tv_in1k' is a PyTorch .pth file, which needs PyTorch: pip install "
        "'keras-resnet-family[torch]'; or download timm's safetensors copy (no published hash), "
        "https://huggingface.co/timm/resnet18.tv_in1k/resolve/main/model.safetensors, and pass its path."]


def test_tag_downloads_from_a_mirror_and_says_it_is_unverified(reference, tmp_path):
    """A timm record has no published hash: it loads, with a warning giving the file's SHA-256;
    with its classifier, the default input is the record's eval size."""
    folder, outputs, _, images = reference
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "resnet18.a1_in1k.safetensors").write_bytes((folder / "resnet18.safetensors").read_bytes())
    np.save(tmp_path / "x.npy", keras.ops.convert_to_numpy(kr.preprocess_input(images, weights="resnet18.a1_in1k")))
    result = run_python(
        "import warnings, numpy as np, keras_resnet as kr\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    m = kr.build('resnet18', weights='a1_in1k', include_top=False, pooling='avg', input_shape=(64, 64, 3))\n"
        "print('WARN', *[str(w.message) for w in caught if 'unverified' in str(w.message)])\n"
        f"np.save({str(tmp_path / 'got.npy')!r}, m.predict(np.load({str(tmp_path / 'x.npy')!r}), verbose=0))\n"
        "print('TOP', kr.build('resnet18', weights='resnet18.a1_in1k').input_shape)\n",
        env={"KERAS_RESNET_WEIGHTS_URL": mirror.as_uri(), "KERAS_HOME": str(tmp_path / "home")})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resnet18.a1_in1k: " in result.stdout and "is unverified: its publisher states no hash (its SHA-256 is" \
        in result.stdout
    assert _relative(outputs["resnet18/pooled"], np.load(tmp_path / "got.npy")) <= 1e-4
    assert "TOP (None, 288, 288, 3)" in result.stdout


def test_unknown_names_and_tags_list_the_known_ones():
    with pytest.raises(ValueError, match=r"Unknown weights 'resnet50\.nope'\. Known for resnet50: resnet50\.a1_in1k, "
                                         r"resnet50\.a1h_in1k, resnet50\.tv2_in1k, resnet50\.tv_in1k\.$"):
        kr.build("resnet50", weights="resnet50.nope")
    with pytest.raises(ValueError, match=r"Unknown model 'resnet51'\. Known: resnet101, .*wide_resnet50_2\.$"):
        kr.build("resnet51")
    with pytest.raises(ValueError, match=r"'resnet50' names a fixed architecture: leave variant.* build\(50, variant='v1\.5'"):
        kr.build("resnet50", variant="v1")
    with pytest.raises(ValueError, match=r"weights='resnet50\.tv2_in1k' hold a resnet50 \(depth 50\), not depth=101; "
                                         r"build\('resnet50', weights='resnet50\.tv2_in1k'\) builds it\.$"):
        kr.build(101, weights="resnet50.tv2_in1k")



def test_finetune_job_on_a_published_tag(reference, tmp_path):
    """`train --recipe finetune --weights resnet18.a1_in1k`: the tag names the model, its
    record the input normalization; with bn_mode frozen, BN keeps the file's statistics to the end."""
    folder, _, _, _ = reference
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "resnet18.a1_in1k.safetensors").write_bytes((folder / "resnet18.safetensors").read_bytes())
    data = small_cifar_folder(tmp_path / "data", classes=("cat", "dog"), per_class=8)
    env = {**os.environ, "KERAS_RESNET_WEIGHTS_URL": mirror.as_uri(), "KERAS_HOME": str(tmp_path / "home"),
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-m", "keras_resnet.cli", "train", "--recipe", "finetune", "--weights",
         "resnet18.a1_in1k", "--data", str(data), "--epochs", "2", "--batch-size", "8",
         "--precision", "float32", "--set", "train.head_steps=1", "--set", "train.bn_mode='frozen'", "--set", "data.image_size=[64, 64]",
         "--output", str(tmp_path / "run")], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["data"]["eval_crop_fraction"] == registry.get_weights("resnet18.a1_in1k").crop_pct
    model = keras.models.load_model(tmp_path / "run" / "model.keras")
    assert model.output_shape == (None, 2) and model.name.startswith("resnet18")
    check = run_python(
        "import numpy as np, keras_resnet as kr\n"
        "m = kr.build('resnet18', weights='a1_in1k', include_top=False, input_shape=(64, 64, 3))\n"
        f"np.save({str(tmp_path / 'mean.npy')!r}, m.get_layer('conv3_block1').bn1.moving_mean.numpy())\n",
        env={"KERAS_RESNET_WEIGHTS_URL": mirror.as_uri(), "KERAS_HOME": str(tmp_path / "home")})
    assert check.returncode == 0, check.stderr[-2000:]
    np.testing.assert_array_equal(model.get_layer("conv3_block1").bn1.moving_mean.numpy(),
                                  np.load(tmp_path / "mean.npy"))
