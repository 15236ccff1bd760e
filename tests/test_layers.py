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


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("size", [8, 7])
def test_subsample_matches_strided_slice_in_values_and_gradients(dtype, size):
    import tensorflow as tf

    from keras_resnet.layers import _subsample

    x = tf.random.stateless_normal((3, size, size, 5), seed=(1, 2)) * 1e3  # negatives too
    x = tf.cast(tf.tensor_scatter_nd_update(x, [[0, 0, 0, 0], [1, 2, 2, 1], [2, 0, 2, 3]],
                                            [np.nan, np.inf, -np.inf]), dtype)  # and non-finite values
    upstream = tf.cast(tf.random.stateless_normal((3, (size + 1) // 2, (size + 1) // 2, 5), seed=(3, 4)), dtype)
    results = []
    for fn in (lambda t: _subsample(t, 2, "channels_last"), lambda t: t[:, ::2, ::2, :]):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x)
        results.append((y.numpy().astype("float32"), tape.gradient(y, x, upstream).numpy().astype("float32")))
    (y, grad), (y_ref, grad_ref) = results
    np.testing.assert_array_equal(y, y_ref)  # NaN where the reference has NaN
    assert np.isnan(y).sum() == 1 and np.isinf(y).sum() == 2
    np.testing.assert_array_equal(grad, grad_ref)


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
    assert not kr.layers.BatchNormalization.from_config({**bn.get_config(), "fused": False}).fused


def _bn_pair(dtype_policy):
    """Keras's BatchNormalization and ours, with the same random weights and statistics."""
    rng = np.random.default_rng(0)
    eps = kr.layers.FUSED_MIN_EPSILON  # the smallest the fused kernel trains with as given
    pair = [keras.layers.BatchNormalization(momentum=0.9, epsilon=eps, dtype=dtype_policy),
            kr.layers.BatchNormalization(momentum=0.9, epsilon=eps, dtype=dtype_policy)]
    for bn in pair:
        bn.build((None, 6, 6, 4))
    values = [rng.uniform(0.5, 2, 4), rng.normal(size=4), rng.normal(size=4), rng.uniform(0.5, 2, 4)]
    for bn in pair:
        bn.set_weights([v.astype("float32") for v in values])
    return pair, values


def _train_call(bn, x):
    import tensorflow as tf

    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.cast(bn(x, training=True), tf.float32)
        loss = tf.reduce_sum(y * np.random.default_rng(2).normal(size=x.shape).astype("float32"))
    grads = tape.gradient(loss, [x, bn.gamma.value, bn.beta.value])
    return [y.numpy()] + [g.numpy() for g in grads] + [bn.moving_mean.numpy(), bn.moving_variance.numpy()]


@pytest.mark.parametrize("policy,tol", [("float32", 1e-4), ("mixed_bfloat16", 5e-2)])
def test_fused_batch_norm_matches_keras_in_training(policy, tol):
    x = np.random.default_rng(1).normal(3.0, 2.0, (8, 6, 6, 4)).astype("float32")
    (keras_bn, ours), values = _bn_pair(policy)
    want, got = _train_call(keras_bn, x), _train_call(ours, x)
    for name, w, g in zip(["output", "d/dx", "d/dgamma", "d/dbeta"], want[:4], got[:4]):
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol, err_msg=name)
    np.testing.assert_allclose(got[4], want[4], rtol=1e-6, err_msg="moving mean")
    # The fused kernel's moving variance uses the unbiased batch variance (n = 8*6*6).
    n = x.shape[0] * x.shape[1] * x.shape[2]
    seen = keras.ops.convert_to_numpy(keras.ops.cast(keras.ops.cast(x, ours.compute_dtype), "float32"))
    batch_var = seen.astype("float64").var(axis=(0, 1, 2))
    expected = 0.9 * values[3] + 0.1 * batch_var * n / (n - 1)
    np.testing.assert_allclose(got[5], expected, rtol=1e-5, err_msg="moving variance")
    # Inference is Keras's own path: identical given the same statistics.
    ours.set_weights(keras_bn.get_weights())
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(ours(x, training=False)),
                                  keras.ops.convert_to_numpy(keras_bn(x, training=False)))


def test_resnet_training_step_runs_the_fused_kernel():
    import tensorflow as tf

    model = kr.build(20)

    def fused_ops(training):
        graph = tf.function(lambda x: model(x, training=training)).get_concrete_function(
            tf.TensorSpec([2, 32, 32, 3])).graph
        return sum(op.type == "FusedBatchNormV3" for op in graph.get_operations())

    assert fused_ops(True) == 19  # every BN of ResNet-20: stem + 2 per block
    assert fused_ops(False) == 0  # inference is Keras's own path
    for layer in model._flatten_layers():
        if isinstance(layer, kr.BatchNormalization):
            layer.fused = False
    assert fused_ops(True) == 0  # fused=False: Keras's path in training too
