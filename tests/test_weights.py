"""Exact loading of keras.applications and old keras-resnet weight files, and the download
path with its hash checks, without a network.

keras.applications models, and keras-resnet 0.1/0.2 models rebuilt here after that
package's source, get random, non-trivial weights (BN statistics, conv biases, Caffe
scale layers), are written with Keras's legacy HDF5 writer, and loaded into ours.
"""

import hashlib

import h5py
import keras
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format

import keras_resnet as kr
from keras_resnet import weights as weights_lib

SIZE = (64, 64, 3)


def _perturbed(app, include_top, seed):
    rng = np.random.default_rng(seed)
    model = app(weights=None, include_top=include_top, input_shape=SIZE, classifier_activation=None)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 1.5, c))
            layer.beta.assign(rng.normal(0, 0.1, c))
            layer.moving_mean.assign(rng.normal(0, 0.1, c))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, c))
        elif isinstance(layer, keras.layers.Conv2D) and layer.use_bias:
            layer.bias.assign(rng.normal(0, 0.1, layer.bias.shape))
    return model


@pytest.fixture(scope="module")
def reference_files(tmp_path_factory):
    """{(variant, include_top): (keras.applications model, legacy .h5 path)}"""
    out = {}
    folder = tmp_path_factory.mktemp("kapps")
    for variant, app in (("v1", keras.applications.ResNet50), ("v2", keras.applications.ResNet50V2)):
        for top in (True, False):
            model = _perturbed(app, top, seed=len(out))
            path = folder / f"{variant}_{'top' if top else 'notop'}.h5"
            with h5py.File(path, "w") as f:
                legacy_h5_format.save_weights_to_hdf5_group(f, model)
            out[variant, top] = (model, str(path))
    return out


def _relative(a, b):
    return float(np.abs(a - b).max() / np.abs(a).max())


@pytest.mark.parametrize("variant", ["v1", "v2"])
@pytest.mark.parametrize("top", [True, False])
def test_same_file_same_logits_as_keras_applications(reference_files, cifar_images, variant, top):
    reference, path = reference_files[variant, top]
    ours = kr.build(50, variant=variant, weights=path, include_top=top, input_shape=SIZE,
                    classifier_activation=None)
    x = keras.ops.convert_to_numpy(
        kr.preprocess_input(np.resize(cifar_images, (4, *SIZE)), "caffe" if variant == "v1" else "tf"))
    assert _relative(reference.predict(x, verbose=0), ours.predict(x, verbose=0)) <= 1e-4


def test_keras_applications_v1_files_load_into_the_old_api(reference_files, cifar_images):
    """The old API builds keras.applications' stem for its files and maps its layer names."""
    reference, path = reference_files["v1", True]
    ours = kr.models.ResNet50(keras.Input(SIZE), weights=path, classifier_activation=None)
    assert ours.get_layer("pool1").padding == "valid" and ours.get_layer("bn_conv1").epsilon == 1.001e-5
    x = keras.ops.convert_to_numpy(kr.preprocess_input(np.resize(cifar_images, (4, *SIZE)), "caffe"))
    assert _relative(reference.predict(x, verbose=0), ours.predict(x, verbose=0)) <= 1e-4
    with pytest.raises(ValueError, match=r"holds keras\.applications ResNet v2 weights; the old keras-resnet API "
                                         r"builds v1 networks: build it with keras_resnet\.build\(depth, "
                                         r"variant='v2', weights=path\)"):
        kr.models.ResNet50(keras.Input(SIZE), weights=reference_files["v2", True][1])
    with pytest.raises(ValueError, match=r"trained with a stem padding conv1 'valid' and pool1 'valid'; this "
                                         r"model pads them 'valid' and 'same'"):
        kr.models.ResNet50(keras.Input(SIZE)).load_weights(path, by_name=True)


def test_variant_is_read_from_the_file(reference_files):
    _, v2_path = reference_files["v2", False]
    model = kr.build(50, weights=v2_path, include_top=False, input_shape=SIZE)
    assert model.name == "resnet50_v2"
    with pytest.raises(ValueError, match=r"ResNet v2 weights, which do not fit variant='v1'"):
        kr.build(50, variant="v1", weights=v2_path, include_top=False)


def test_include_preprocessing_takes_raw_pixels(reference_files, cifar_images):
    reference, path = reference_files["v1", True]
    ours = kr.build(50, weights=path, input_shape=SIZE, include_preprocessing=True,
                    classifier_activation=None)
    raw = np.resize(cifar_images, (4, *SIZE))
    expected = reference.predict(keras.applications.resnet.preprocess_input(raw.copy()), verbose=0)
    assert _relative(expected, ours.predict(raw, verbose=0)) <= 1e-4


def test_file_with_top_loads_into_headless_model(reference_files):
    _, path = reference_files["v1", True]
    model = kr.build(50, weights=path, include_top=False, input_shape=SIZE)
    assert model.output_shape[-1] == 2048


def _snapshot(model):
    return [w.numpy().copy() for w in model.weights]


def test_wrong_architecture_is_refused_and_nothing_is_loaded(reference_files):
    _, v1_path = reference_files["v1", False]
    _, v1_top_path = reference_files["v1", True]
    deeper = kr.build(101, variant="v1", include_top=False, input_shape=SIZE)
    before = _snapshot(deeper)
    with pytest.raises(ValueError, match=r"at layer 'conv4_block7_1_conv'.*no such layer"):
        weights_lib.load_weights(deeper, v1_path)
    assert all(np.array_equal(a, b) for a, b in zip(before, _snapshot(deeper)))

    topped = kr.build(50, variant="v1", input_shape=SIZE)
    before = _snapshot(topped)
    with pytest.raises(ValueError, match=r"at layer 'predictions'"):
        weights_lib.load_weights(topped, v1_path)
    assert all(np.array_equal(a, b) for a, b in zip(before, _snapshot(topped)))

    fewer_classes = kr.build(50, variant="v1", input_shape=SIZE, num_classes=10)
    with pytest.raises(ValueError, match=r"at layer 'predictions': file has shape \(2048, 1000\)"):
        weights_lib.load_weights(fewer_classes, v1_top_path)


def test_not_a_weights_file_is_a_clear_error(tmp_path):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all")
    with pytest.raises(ValueError, match=r"Cannot read .*junk.h5"):
        kr.build(50, weights=str(junk))


def test_native_weights_round_trip_and_refusal(tmp_path, cifar_images):
    source = kr.build(20)
    source.compile("sgd", "sparse_categorical_crossentropy")
    source.fit(cifar_images, np.arange(20) % 10, epochs=1, verbose=0)
    path = str(tmp_path / "resnet20.weights.h5")
    source.save_weights(path)
    same = kr.build(20, weights=path)
    np.testing.assert_array_equal(same.predict(cifar_images, verbose=0),
                                  source.predict(cifar_images, verbose=0))
    other = kr.build(32)
    before = _snapshot(other)
    with pytest.raises(ValueError, match=r"does not fit this model at layer 'conv2_block4"):
        weights_lib.load_weights(other, path)
    assert all(np.array_equal(a, b) for a, b in zip(before, _snapshot(other)))


def test_imagenet_source_matches_keras_own_constants():
    from keras.src.applications import resnet

    records = {w.name: w for w in kr.registry.WEIGHTS.values() if w.source == "keras.applications"}
    assert sorted(records) == sorted(f"resnet{d}_{v}.keras_in1k" for d in (50, 101, 152) for v in ("v1", "v2"))
    for record in records.values():
        depth, variant = record.model.removeprefix("resnet").split("_")
        key = f"resnet{depth}{'v2' if variant == 'v2' else ''}"
        assert record.url == f"{resnet.BASE_WEIGHTS_PATH}{key}_weights_tf_dim_ordering_tf_kernels.h5"
        assert record.notop_url == record.url.replace(".h5", "_notop.h5")
        assert (record.file_hash, record.notop_hash) == resnet.WEIGHTS_HASHES[key]


def test_imagenet_fetch_checks_the_published_hash_and_removes_the_file(tmp_path):
    """The real download path, against a local mirror holding a file with the wrong bytes."""
    from conftest import run_python

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5").write_bytes(b"corrupt")
    result = run_python(
        "import keras_resnet as kr\n"
        "try:\n    kr.build(50, weights='imagenet', include_top=False)\n"
        "except OSError as e:\n    print('ERROR', e)\n",
        env={"KERAS_RESNET_WEIGHTS_URL": mirror.as_uri(), "KERAS_HOME": str(tmp_path / "home")})
    assert result.returncode == 0, result.stderr
    assert "ERROR Could not fetch ImageNet weights resnet50_v1.keras_in1k" in result.stdout
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5: its md5 hash is" in result.stdout
    assert "The file was removed; run again to download it anew." in result.stdout
    assert not list((tmp_path / "home").rglob("*.h5"))


def test_sha256_prefix_of_torchvision_file_names_is_verified(tmp_path):
    """torchvision's file names carry their SHA-256's first digits: a file with them loads
    silently, one without is removed, as torchvision's check_hash would refuse it."""
    from conftest import run_python

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "resnet18-f37072fd.pth").write_bytes(b"not resnet18")
    good = hashlib.sha256(b"not resnet18").hexdigest()[:8]
    result = run_python(
        "import dataclasses, warnings\n"
        "from keras_resnet import registry, weights\n"
        "record = registry.WEIGHTS['resnet18.tv_in1k']\n"
        "with warnings.catch_warnings():\n"
        "    warnings.simplefilter('error')\n"
        f"    print('OK', weights.fetch(dataclasses.replace(record, file_hash={good!r})))\n"
        "try:\n    weights.fetch(record)\n"
        "except OSError as e:\n    print('ERROR', e)\n",
        env={"KERAS_RESNET_WEIGHTS_URL": mirror.as_uri(), "KERAS_HOME": str(tmp_path / "home")})
    assert result.returncode == 0, result.stderr[-2000:]
    cached = tmp_path / "home" / "models" / "resnet18-f37072fd.pth"
    assert f"OK {cached}" in result.stdout
    assert f"its sha256 hash is {hashlib.sha256(b'not resnet18').hexdigest()}, the published one f37072fd" \
        in result.stdout
    assert not cached.exists()


class Scale(keras.layers.Layer):
    """Caffe's Scale layer, as Caffe-converted Keras ResNets kept it beside each BN."""

    def build(self, input_shape):
        self.gamma = self.add_weight(shape=input_shape[-1:], initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=input_shape[-1:], initializer="zeros", name="beta")

    def call(self, x):
        return x * self.gamma + self.beta


def _keras_resnet_reference(blocks, numerical, conv1_same, caffe_scale, include_top, seed):
    """A keras-resnet ResNet (v1 bottlenecks), after that package's models/_2d.py and
    blocks/_2d.py: 0.1 pads conv1 explicitly, 0.2 pads it "same"; pool1 pads "same"."""
    from keras import layers

    def bn(name, x):
        if caffe_scale:  # statistics in the BN, gamma/beta in a separate Scale layer
            x = layers.BatchNormalization(epsilon=1e-5, center=False, scale=False, name=name)(x)
            return Scale(name="scale" + name[2:])(x)
        return layers.BatchNormalization(epsilon=1e-5, name=name)(x)

    inputs = keras.Input(SIZE)
    if conv1_same:
        x = layers.Conv2D(64, 7, 2, padding="same", use_bias=False, name="conv1")(inputs)
    else:
        x = layers.ZeroPadding2D(3, name="padding_conv1")(inputs)
        x = layers.Conv2D(64, 7, 2, use_bias=False, name="conv1")(x)
    x = layers.MaxPooling2D(3, 2, padding="same", name="pool1")(layers.ReLU()(bn("bn_conv1", x)))
    outputs, filters = [], 64
    for stage, repeats in enumerate(blocks):
        for block in range(repeats):
            stride = 2 if block == 0 and stage > 0 else 1
            p = f"{stage + 2}{f'b{block}' if block and numerical[stage] else chr(ord('a') + block)}"
            y = layers.Conv2D(filters, 1, stride, use_bias=False, name=f"res{p}_branch2a")(x)
            y = layers.ZeroPadding2D(1)(layers.ReLU()(bn(f"bn{p}_branch2a", y)))
            y = layers.Conv2D(filters, 3, use_bias=False, name=f"res{p}_branch2b")(y)
            y = layers.Conv2D(filters * 4, 1, use_bias=False, name=f"res{p}_branch2c")(
                layers.ReLU()(bn(f"bn{p}_branch2b", y)))
            shortcut = x if block else bn(f"bn{p}_branch1", layers.Conv2D(
                filters * 4, 1, stride, use_bias=False, name=f"res{p}_branch1")(x))
            x = layers.ReLU()(layers.Add()([bn(f"bn{p}_branch2c", y), shortcut]))
        outputs.append(x)
        filters *= 2
    if include_top:
        outputs = layers.Dense(1000, name="fc1000")(layers.GlobalAveragePooling2D(name="pool5")(x))
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        for w in layer.weights:
            if "moving_variance" in w.path or w.name == "gamma":
                w.assign(rng.uniform(0.5, 1.5, w.shape))
            elif "moving_mean" in w.path or w.name == "beta":
                w.assign(rng.normal(0, 0.1, w.shape))
    return model


@pytest.mark.parametrize("conv1_same, caffe_scale, whole_model", [
    (False, False, False),  # keras-resnet 0.1 (keras-retinanet's ImageNet files), weights only
    (True, False, True),    # keras-resnet 0.2, a whole-model file (model_config read for epsilon)
    (True, True, False),    # Caffe-style BN + Scale pairs
])
def test_old_keras_resnet_files_load_exactly_through_the_old_api(tmp_path, cifar_images, conv1_same,
                                                                  caffe_scale, whole_model):
    blocks, numerical = [2, 2, 2, 1], [False, True, True, False]  # res2b, res3b1, res4b1 (ResNet-101 naming)
    x = keras.ops.convert_to_numpy(kr.preprocess_input(np.resize(cifar_images, (4, *SIZE)), "caffe"))
    for top in (True, False):
        reference = _keras_resnet_reference(blocks, numerical, conv1_same, caffe_scale, top, seed=int(top))
        path = tmp_path / f"old_{top}.h5"
        if whole_model:
            legacy_h5_format.save_model_to_hdf5(reference, str(path))
        else:
            with h5py.File(path, "w") as f:
                legacy_h5_format.save_weights_to_hdf5_group(f, reference)
        ours = kr.models.ResNet50(keras.Input(SIZE), blocks=blocks, include_top=top, weights=str(path),
                                  classifier_activation=None)
        expected, got = reference.predict(x, verbose=0), ours.predict(x, verbose=0)
        for e, g in (zip(expected, got) if not top else [(expected, got)]):
            assert _relative(e, g) <= 1e-4


def test_old_keras_resnet_files_are_refused_where_they_cannot_be_exact(tmp_path):
    reference = _keras_resnet_reference([3, 4, 6, 3], [False] * 4, True, False, True, seed=0)
    path = tmp_path / "resnet50_keras_resnet.h5"
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, reference)
    with pytest.raises(ValueError, match=r"holds keras-resnet 0\.x weights, whose stem pads conv1/pool1 as "
                                         r"TensorFlow's 'same' does, unlike build\(\): load it with "
                                         r"keras_resnet\.models\.ResNet50\(inputs, weights=path\)"):
        kr.build(50, variant="v1", weights=str(path))
    with pytest.raises(ValueError, match=r"at layer 'res4g_branch2a': the file has no such layer"):
        kr.models.ResNet101(keras.Input(SIZE), weights=str(path))
    with h5py.File(path, "a") as f:  # keras-resnet before 0.1: biased convs, BN epsilon not recorded
        f["conv1"].create_dataset("conv1/bias:0", data=np.zeros(64, "float32"))
        names = [n.decode() if isinstance(n, bytes) else n for n in f["conv1"].attrs["weight_names"]]
        f["conv1"].attrs["weight_names"] = np.array([n.encode() for n in names + ["conv1/bias:0"]])
    with pytest.raises(ValueError, match=r"comes from keras-resnet before 0\.1 \(its convs carry biases\) and "
                                         r"does not record its BN epsilon"):
        kr.models.ResNet50(keras.Input(SIZE), weights=str(path))


def test_h5_file_of_another_layout_is_refused(tmp_path):
    inputs = keras.Input((8, 8, 3))
    other = keras.Model(inputs, keras.layers.Conv2D(4, 3, name="features")(inputs))
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, other)
    with pytest.raises(ValueError, match=r"holds no ResNet layout this package reads: expected keras\.applications "
                                         r"layer names \(conv1_conv, \.\.\.\) or keras-resnet ones"):
        kr.build(50, weights=str(path))


@pytest.mark.parametrize("arch, message", [
    (dict(se_ratio=1 / 16), r"does not fit this model: it has nothing for 64 of the model's 329 variables "
                            r"\(conv2_block1/se/reduce/kernel"),
    (dict(shortcut="avgpool"), r"holds keras\.applications weights with strided 1x1 projection shortcuts, but "
                               r"conv2_block1 pools before its projection \(shortcut='avgpool'\)"),
])
def test_legacy_file_into_another_architecture_with_agreeing_shapes_is_refused(reference_files, arch, message):
    """A v1 file used to cover 265 of an SE model's 329 variables (the SE ones left random),
    and to load whole into an average-pooled-shortcut model."""
    _, path = reference_files["v1", False]
    model = kr.build(50, variant="v1", include_top=False, input_shape=SIZE, **arch)
    before = _snapshot(model)
    for load in (weights_lib.load_weights, lambda m, p: kr.converters.load(m, kr.converters.read(p))):
        with pytest.raises(ValueError, match=message):
            load(model, path)
    assert all(np.array_equal(a, b) for a, b in zip(before, _snapshot(model)))


def test_keras_retinanets_outer_model_loads_every_backbone_variable_by_name(tmp_path, cifar_images):
    """keras-retinanet builds a plain keras.Model around the backbone and calls Keras's own
    by-name loader on it. The old API's layers carry the old package's names, so every
    backbone variable is found (it assigned none, silently, while they did not)."""
    reference = _keras_resnet_reference([3, 4, 6, 3], [False] * 4, False, False, False, seed=5)
    path = tmp_path / "ResNet-50-model.keras.h5"
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, reference)
    # keras-retinanet's models/resnet.py and models/retinanet.py, cut to what touches the backbone:
    inputs = keras.layers.Input(shape=(None, None, 3))
    resnet = kr.models.ResNet50(inputs, include_top=False, freeze_bn=True)
    C3, C4, C5 = resnet.outputs[1:]
    P5 = keras.layers.Conv2D(256, kernel_size=1, strides=1, padding="same", name="C5_reduced")(C5)
    P4 = keras.layers.Conv2D(256, kernel_size=1, strides=1, padding="same", name="C4_reduced")(C4)
    model = keras.models.Model(inputs=inputs, outputs=[P4, P5], name="retinanet")
    model.load_weights(str(path), by_name=True, skip_mismatch=True)
    x = keras.ops.convert_to_numpy(kr.preprocess_input(np.resize(cifar_images, (2, *SIZE)), "caffe"))
    for expected, got in zip(reference.predict(x, verbose=0), resnet.predict(x, verbose=0)):
        assert _relative(expected, got) <= 1e-5
    file_layers = {n for n in reference_layer_names(path)}
    backbone = [layer.name for layer in resnet.layers if layer.weights]
    assert backbone and set(backbone) <= file_layers


def reference_layer_names(path) -> list[str]:
    with h5py.File(path, "r") as f:
        return [n.decode() if isinstance(n, bytes) else n for n in f.attrs["layer_names"]]


def test_old_code_loads_the_old_file_with_keras_load_weights_by_name(tmp_path, cifar_images):
    """keras-retinanet's way: `ResNet50(inputs).load_weights(path, by_name=True)`. Keras's own
    by-name loader matches the old layer names, which ours are not: it assigned 0 of 265
    weights and said nothing. The old API's models convert the file exactly, or refuse."""
    reference = _keras_resnet_reference([3, 4, 6, 3], [False] * 4, False, False, True, seed=3)
    path = tmp_path / "ResNet-50-model.keras.h5"
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, reference)
    x = keras.ops.convert_to_numpy(kr.preprocess_input(np.resize(cifar_images, (4, *SIZE)), "caffe"))
    ours = kr.models.ResNet50(keras.Input(SIZE), classifier_activation=None)
    assert isinstance(ours, kr.models.ResNetModel)
    expected = reference.predict(x, verbose=0)
    assert _relative(expected, ours.predict(x, verbose=0)) > 0.1  # random before the load
    ours.load_weights(str(path), by_name=True)
    assert _relative(expected, ours.predict(x, verbose=0)) <= 1e-4

    deeper = kr.models.ResNet101(keras.Input(SIZE))
    before = _snapshot(deeper)
    with pytest.raises(ValueError, match=r"at layer 'res4g_branch2a': the file has no such layer"):
        deeper.load_weights(str(path), by_name=True, skip_mismatch=True)
    assert all(np.array_equal(a, b) for a, b in zip(before, _snapshot(deeper)))

    same_conv = _keras_resnet_reference([3, 4, 6, 3], [False] * 4, True, False, True, seed=4)
    other = tmp_path / "conv1_same.h5"
    with h5py.File(other, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, same_conv)
    with pytest.raises(ValueError, match=r"trained with a stem padding conv1 'same' and pool1 'same'; this model "
                                         r"pads them 'valid' and 'same'.*ResNet50\(inputs, weights=path\)"):
        ours.load_weights(str(other), by_name=True)
    saved = tmp_path / "old_api.keras"
    ours.save(saved)
    again = keras.models.load_model(saved)
    assert isinstance(again, kr.models.ResNetModel)
    assert _relative(expected, again.predict(x, verbose=0)) <= 1e-4
