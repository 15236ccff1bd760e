import keras
import numpy as np
import pytest

import keras_resnet as kr

BLOCKS = [kr.BasicBlock, kr.BottleneckBlock, kr.PreActBasicBlock, kr.PreActBottleneckBlock]


def test_blocks_are_public_registered_layers():
    for cls in BLOCKS + [kr.ZeroPadShortcut, kr.SqueezeExcite, kr.DropPath, kr.Preprocessing]:
        assert issubclass(cls, keras.layers.Layer) and cls.__name__ in kr.__all__
        assert keras.saving.get_registered_name(cls) == f"keras_resnet>{cls.__name__}"


@pytest.mark.parametrize("cls", BLOCKS)
@pytest.mark.parametrize("stride, shortcut", [(1, "projection"), (2, "projection"), (2, "avgpool")])
def test_block_in_any_functional_model(cls, stride, shortcut):
    inputs = keras.Input((16, 16, 32))
    block = cls(32, stride, shortcut=shortcut, se_ratio=0.25, name="blk")
    outputs = block(inputs)
    expected_channels = 32 * cls.expansion
    assert tuple(outputs.shape) == (None, 16 // stride, 16 // stride, expected_channels)
    clone = cls.from_config(block.get_config())
    assert clone.get_config() == block.get_config()
    model = keras.Model(inputs, outputs)
    assert model.predict(np.random.rand(2, 16, 16, 32), verbose=0).shape[0] == 2


def test_identity_block_with_zero_init_starts_as_identity():
    inputs = keras.Input((8, 8, 16))
    model = keras.Model(inputs, kr.BasicBlock(16, zero_init_residual=True)(inputs))
    x = np.random.rand(2, 8, 8, 16).astype("float32")  # non-negative: relu(x + 0) == x
    np.testing.assert_allclose(model.predict(x, verbose=0), x, rtol=1e-6, atol=1e-6)


def test_zero_pad_shortcut_subsamples_and_pads_channels():
    x = np.arange(2 * 4 * 4 * 2, dtype="float32").reshape(2, 4, 4, 2)
    y = keras.ops.convert_to_numpy(kr.ZeroPadShortcut(6, 2)(x))
    assert y.shape == (2, 2, 2, 6)
    np.testing.assert_array_equal(y[..., 2:4], x[:, ::2, ::2, :])
    assert not y[..., :2].any() and not y[..., 4:].any()


def test_drop_path_drops_whole_samples_only_in_training():
    layer = kr.DropPath(0.5, seed=1)
    x = np.ones((64, 2, 2, 3), dtype="float32")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x)), x)
    y = keras.ops.convert_to_numpy(layer(x, training=True))
    per_sample = y.reshape(64, -1)
    assert set(np.unique(per_sample)) <= {0.0, 2.0}
    assert np.all(per_sample.min(axis=1) == per_sample.max(axis=1))  # whole samples
    assert 10 < (per_sample[:, 0] == 0).sum() < 54


def test_preprocessing_matches_keras_applications(cifar_images):
    from keras.applications import resnet, resnet_v2

    for mode, reference in (("caffe", resnet.preprocess_input), ("tf", resnet_v2.preprocess_input)):
        ours = keras.ops.convert_to_numpy(kr.preprocess_input(cifar_images, mode))
        np.testing.assert_allclose(ours, reference(cifar_images.copy()), rtol=1e-6, atol=1e-4)
    torch_mode = keras.ops.convert_to_numpy(kr.preprocess_input(cifar_images, "torch"))
    expected = (cifar_images / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(torch_mode, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="Unknown preprocessing mode 'bgr'"):
        kr.preprocess_input(cifar_images, "bgr")


def _round_trip(model, tmp_path, images):
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # default safe_mode=True
    np.testing.assert_array_equal(loaded.predict(images, verbose=0), model.predict(images, verbose=0))
    assert [l.name for l in loaded.layers] == [l.name for l in model.layers]
    return loaded


def test_keras_file_round_trip_cifar_with_se_and_drop_path(tmp_path, cifar_images):
    model = kr.build(20, se_ratio=0.25, drop_path_rate=0.1, include_preprocessing=True)
    model.compile("sgd", "sparse_categorical_crossentropy")
    model.fit(cifar_images, np.arange(20) % 10, epochs=1, verbose=0)  # non-trivial BN stats
    loaded = _round_trip(model, tmp_path, cifar_images)
    assert isinstance(loaded.get_layer("conv3_block1"), kr.BasicBlock)


def test_keras_file_round_trip_preact_deep_stem_network(tmp_path, cifar_images):
    spec = kr.ResNetSpec(
        (kr.StageSpec("basic", 16, 1), kr.StageSpec("bottleneck", 16, 2, 2)),
        stem="deep", stem_filters=16, preact=True, shortcut="avgpool", groups=2, width_per_group=32)
    model = kr.build_from_spec(spec, num_classes=10, input_shape=(32, 32, 3), preprocessing="tf")
    loaded = _round_trip(model, tmp_path, cifar_images)
    assert isinstance(loaded.get_layer("conv3_block1"), kr.PreActBottleneckBlock)


def test_compat_batch_normalization_freeze():
    bn = kr.layers.BatchNormalization(freeze=True, axis=-1)
    x = np.random.rand(8, 3).astype("float32") * 10
    y = keras.ops.convert_to_numpy(bn(x, training=True))
    np.testing.assert_allclose(y, x / np.sqrt(1 + bn.epsilon), rtol=1e-5)  # inference statistics
    assert not bn.trainable_weights
    assert kr.layers.BatchNormalization.from_config(bn.get_config()).freeze
