"""The registry: named models, one record per published weight, checked against what
torchvision and timm themselves publish; validation before any download; the table."""

import json
import re

import keras
import numpy as np
import pytest

import keras_resnet as kr
from conftest import ROOT, run_python
from keras_resnet import cli, registry
from test_converters import require_references

# What torchvision's Weights enums and timm's pretrained configs say, read in a subprocess
# (torchvision cannot be imported after TensorFlow here).
PUBLISHED_SCRIPT = r"""
import json, sys
import timm, torchvision.models as tv
names = json.loads(sys.argv[1])
out = {}
for name in names:
    cfg = timm.models.get_pretrained_cfg(name).to_dict()
    out[name] = {"timm": {k: cfg.get(k) for k in ("url", "input_size", "test_input_size", "crop_pct",
                                                   "test_crop_pct", "interpolation", "license", "mean", "std")}}
for enum in (tv.ResNet18_Weights, tv.ResNet34_Weights, tv.ResNet50_Weights, tv.ResNet101_Weights,
             tv.ResNet152_Weights, tv.ResNeXt50_32X4D_Weights, tv.ResNeXt101_32X8D_Weights,
             tv.ResNeXt101_64X4D_Weights, tv.Wide_ResNet50_2_Weights, tv.Wide_ResNet101_2_Weights):
    for w in enum:
        t = w.transforms()
        out.setdefault("torchvision", {})[w.url] = {
            "acc1": w.meta["_metrics"]["ImageNet-1K"]["acc@1"], "crop": t.crop_size[0],
            "resize": t.resize_size[0], "interpolation": t.interpolation.value, "name": f"{enum.__name__}.{w.name}"}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def published():
    require_references()
    names = [n for n, w in registry.WEIGHTS.items() if w.source in ("torchvision", "timm")]
    result = run_python(f"import sys; sys.argv = ['p', {json.dumps(names)!r}]\n" + PUBLISHED_SCRIPT)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_names_people_use_are_models_and_every_record_names_one():
    names = kr.list_models()
    for name in ("resnet18", "resnet200", "resnet50d", "resnet200d", "resnext50_32x4d", "resnext101_32x8d",
                 "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2", "seresnet50", "resnet50_v1",
                 "resnet50_v2", "resnet20_cifar", "resnet1202_cifar"):
        assert name in names
    assert all(record.model in registry.MODELS for record in registry.WEIGHTS.values())
    assert kr.list_weights("resnet50") == ["resnet50.a1_in1k", "resnet50.a1h_in1k", "resnet50.tv2_in1k",
                                           "resnet50.tv_in1k"]
    assert kr.list_weights("resnet20_cifar") == ["resnet20_cifar.akamaster_cifar10"]
    resnext = kr.build("resnext50_32x4d")
    assert sum(int(np.prod(w.shape)) for w in resnext.trainable_weights) == 25_028_904  # torchvision's count
    assert kr.build("resnet50").name == "resnet50" and kr.build(50).name == "resnet50_v1.5"


def test_torchvision_records_are_torchvisions_own(published):
    """URL, reported acc@1, eval crop and interpolation as torchvision's Weights enums state
    them; the hash is the SHA-256 prefix in the file name; the file is a .pth."""
    records = [r for r in registry.WEIGHTS.values() if r.source == "torchvision"]
    assert {r.url for r in records} == set(published["torchvision"])
    for record in records:
        truth = published["torchvision"][record.url]
        assert record.top1 == truth["acc1"] and record.top1_source == f"torchvision {truth['name']} meta"
        assert (record.eval_size, record.interpolation) == (truth["crop"], truth["interpolation"])
        assert abs(record.crop_pct - truth["crop"] / truth["resize"]) < 1e-3, record.name
        assert record.url.endswith(f"-{record.file_hash}.pth") and re.fullmatch(r"[0-9a-f]{8}", record.file_hash)
        assert record.file_format == "pth" and record.file_name(True) == record.url.rsplit("/", 1)[1]


def test_timm_records_are_timms_own(published):
    """Sizes, crops, interpolation, license and normalization as timm's pretrained configs
    state them; timm's files are safetensors on the Hugging Face hub without a hash."""
    # pytorch/vision#5935 trained it with --train-crop-size=176; timm's config says 224.
    train_sizes = {"resnext101_64x4d.tv_in1k": 176}
    for name, record in registry.WEIGHTS.items():
        if record.source not in ("torchvision", "timm"):
            continue
        cfg = published[name]["timm"]
        eval_size = (cfg["test_input_size"] or cfg["input_size"])[-1]
        crop = cfg["test_crop_pct"] if cfg["test_input_size"] else cfg["crop_pct"]
        train_size = train_sizes.get(name, cfg["input_size"][-1])
        assert (record.train_size, record.eval_size) == (train_size, eval_size), name
        if record.source == "timm":  # torchvision's own transforms are checked above
            assert (record.crop_pct, record.interpolation) == (crop, cfg["interpolation"]), name
            assert record.license.lower() == cfg["license"] and record.file_hash is None
            assert record.url == record.safetensors_url and record.file_format == "safetensors"
            assert record.file_name(True) == f"{name}.safetensors"
        assert np.allclose(record.mean, cfg["mean"]) and np.allclose(record.std, cfg["std"]), name


def test_pretrained_inputs_are_validated_before_any_download(tmp_path, monkeypatch):
    """Refusals come before the (empty) mirror is asked: a download would fail otherwise."""
    monkeypatch.setenv("KERAS_RESNET_WEIGHTS_URL", tmp_path.as_uri())
    tag = "resnet50.tv2_in1k"
    cases = [
        (dict(input_shape=(64, 64, 3)), r"with include_top=True take 176x176 or 224x224 images, got input_shape "
                                        r"\(64, 64, 3\)\. Use include_top=False for other sizes\.$"),
        (dict(include_top=False, input_shape=(64, 64, 1)), r"take RGB images \(3 channels\); input_shape "
                                                           r"\(64, 64, 1\) has 1\."),
        (dict(num_classes=10), r"with include_top=True has 1000 classes, got num_classes=10\. Use include_top=False"),
        (dict(classifier_activation="sigmoid"), r"classifier_activation='sigmoid' does not fit "
                                                r"weights='resnet50\.tv2_in1k': their classifier was trained for "
                                                r"softmax"),
        (dict(groups=32), r"fit the plain architecture of resnet50 only"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            kr.build(50, weights=tag, **kwargs)
    with pytest.raises(OSError, match=r"Could not fetch ImageNet weights resnet50\.tv2_in1k from "
                                      r"file:///.*/resnet50-11ad3fa6\.pth"):
        kr.build("resnet50", weights="tv2_in1k", input_shape=(176, 176, 3))


def test_preprocess_input_takes_the_records_normalization(cifar_images):
    torch_mode = keras.ops.convert_to_numpy(kr.preprocess_input(cifar_images, "torch"))
    by_record = keras.ops.convert_to_numpy(kr.preprocess_input(cifar_images, weights="resnet50.tv2_in1k"))
    np.testing.assert_array_equal(by_record, torch_mode)
    record = registry.WEIGHTS["resnet50.tv2_in1k"]
    np.testing.assert_allclose(by_record, (cifar_images / 255 - record.mean) / record.std, rtol=1e-5, atol=1e-5)
    v2 = keras.ops.convert_to_numpy(kr.preprocess_input(cifar_images, weights="resnet50_v2.keras_in1k"))
    np.testing.assert_allclose(v2, cifar_images / 127.5 - 1, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"weights='resnet50\.tv2_in1k' expect preprocessing mode 'torch', "
                                         r"not 'caffe'\.$"):
        kr.preprocess_input(cifar_images, "caffe", weights="resnet50.tv2_in1k")


def test_weights_command_prints_the_table(capsys):
    assert cli.main(["weights", "seresnet50"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["weights", "source", "data", "top-1", "%", "train", "/", "eval", "px", "eval", "crop",
                                "hash", "needs", "license"]
    assert [line.split()[:4] for line in lines[1:]] == [["seresnet50.a1_in1k", "timm", "ImageNet-1K", "81.11"],
                                                        ["seresnet50.ra2_in1k", "timm", "ImageNet-1K", "81.29"]]
    assert cli.main(["weights", "resnet50.tv*", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["resnet50.tv2_in1k", "resnet50.tv_in1k"] and rows[0]["top1"] == 80.858
    assert cli.main(["weights", "vgg*"]) == 2
    assert capsys.readouterr().err.strip() == ("keras-resnet weights: error: No weights match 'vgg*'; "
                                               "`keras-resnet weights` lists them all.")


def test_docs_weight_table_is_generated_from_the_registry(capsys):
    assert cli.main(["weights", "--format", "markdown"]) == 0
    table = capsys.readouterr().out.strip()
    docs = (ROOT / "docs" / "models.md").read_text()
    section = docs[docs.index("## Published weights"):]
    assert table in section[:section.index("\n## ", 3)]
    assert len(table.splitlines()) == 2 + len(registry.WEIGHTS)
