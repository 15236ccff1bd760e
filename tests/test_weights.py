"""Exact loading of keras.applications weight files, without a network.

keras.applications models get random, non-trivial weights (BN statistics, conv biases),
are written with Keras's legacy HDF5 writer, and loaded into ours.
"""

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
        weights_lib.load_weights(deeper, v1_path, depth=101, variant="v1", include_top=False)
    assert all(np.array_equal(a, b) for a, b in zip(before, _snapshot(deeper)))

    topped = kr.build(50, variant="v1", input_shape=SIZE)
    before = _snapshot(topped)
    with pytest.raises(ValueError, match=r"at layer 'predictions'"):
        weights_lib.load_weights(topped, v1_path, depth=50, variant="v1", include_top=True)
    assert all(np.array_equal(a, b) for a, b in zip(before, _snapshot(topped)))

    fewer_classes = kr.build(50, variant="v1", input_shape=SIZE, num_classes=10)
    with pytest.raises(ValueError, match=r"at layer 'predictions': file has shape \(2048, 1000\)"):
        weights_lib.load_weights(fewer_classes, v1_top_path, depth=50, variant="v1", include_top=True)


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
        weights_lib.load_weights(other, path, depth=32, variant="cifar", include_top=True)
    assert all(np.array_equal(a, b) for a, b in zip(before, _snapshot(other)))


def test_imagenet_source_matches_keras_own_constants():
    from keras.src.applications import resnet

    assert weights_lib.KERAS_APPLICATIONS_URL == resnet.BASE_WEIGHTS_PATH
    for key, hashes in weights_lib.KERAS_APPLICATIONS_MD5.items():
        assert resnet.WEIGHTS_HASHES[key] == hashes
    assert sorted(weights_lib.PRETRAINED) == [(d, v) for d in (50, 101, 152) for v in ("v1", "v2")]


def test_imagenet_fetch_checks_the_published_hash(tmp_path):
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
    assert "ERROR Could not fetch ImageNet weights" in result.stdout
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in result.stdout
    assert "corrupted" in result.stdout.lower() or "hash" in result.stdout.lower()
