import math

import keras
import numpy as np
import pytest

import keras_resnet as kr

# Trainable parameters (torchvision's published counts; He et al. 2016 for CIFAR).
EXACT_COUNTS = [
    (dict(depth=18), 11_689_512),
    (dict(depth=34), 21_797_672),
    (dict(depth=50), 25_557_032),
    (dict(depth=101), 44_549_160),
    (dict(depth=152), 60_192_808),
    (dict(depth=200), 64_673_832),
    (dict(depth=50, groups=32, width_per_group=4), 25_028_904),
    (dict(depth=50, width_per_group=128), 68_883_240),
    (dict(depth=20), 269_722),
    (dict(depth=32), 464_154),
    (dict(depth=44), 658_586),
    (dict(depth=56), 853_018),
    (dict(depth=110), 1_727_962),
]


@pytest.mark.parametrize("kwargs, expected", EXACT_COUNTS,
                         ids=[str(k) for k, _ in EXACT_COUNTS])
def test_exact_trainable_parameter_counts(kwargs, expected):
    model = kr.build(**kwargs)
    assert kr.count_params(model) == expected
    assert sum(math.prod(w.shape) for w in model.trainable_weights) == expected


def test_cifar_option_b_and_keras_applications_v2_counts():
    assert kr.count_params(kr.build(20, shortcut="B")) == 272_474
    assert kr.count_params(kr.build(56, shortcut="B")) == 855_770
    # v2 follows keras.applications ResNet50V2 exactly (biased convs on the residual stream).
    assert kr.count_params(kr.build(50, variant="v2")) == 25_568_360


@pytest.mark.parametrize("kwargs, gmacs", [(dict(depth=18), 1.81), (dict(depth=50), 4.09),
                                           (dict(depth=101), 7.80),
                                           (dict(depth=50, groups=32, width_per_group=4), 4.23),
                                           (dict(depth=50, width_per_group=128), 11.40)])
def test_macs_match_published(kwargs, gmacs):
    assert round(kr.count_macs(kr.build(**kwargs)) / 1e9, 2) == gmacs


def test_defaults_per_family():
    cifar = kr.build(20)
    assert cifar.input_shape == (None, 32, 32, 3) and cifar.output_shape == (None, 10)
    assert cifar.name == "resnet20_cifar"
    imagenet = kr.build(18)
    assert imagenet.input_shape == (None, 224, 224, 3) and imagenet.output_shape == (None, 1000)
    assert imagenet.name == "resnet18_v1.5"
    assert kr.build(50, groups=32, width_per_group=4).name == "resnext50_32x4d_v1.5"
    assert kr.build(50, width_per_group=128).name == "wide_resnet50_2_v1.5"


def test_stable_keras_applications_layer_names():
    names = [layer.name for layer in kr.build(50, variant="v1").layers]
    assert names[:7] == ["images", "conv1_pad", "conv1_conv", "conv1_bn", "conv1_relu",
                         "pool1_pad", "pool1_pool"]
    assert names[-2:] == ["avg_pool", "predictions"]
    assert "conv2_block1" in names and "conv5_block3" in names
    assert "post_bn" in [layer.name for layer in kr.build(50, variant="v2").layers]


def _block(model, name):
    return model.get_layer(name)


def test_stride_placement_per_variant():
    v1, v15 = kr.build(50, variant="v1"), kr.build(50, variant="v1.5")
    assert _block(v1, "conv3_block1").conv1.strides == (2, 2)
    assert _block(v1, "conv3_block1").conv2.strides == (1, 1)
    assert _block(v15, "conv3_block1").conv1.strides == (1, 1)
    assert _block(v15, "conv3_block1").conv2.strides == (2, 2)
    v2 = kr.build(50, variant="v2")
    assert _block(v2, "conv3_block4").stride == 2 and _block(v2, "conv3_block1").stride == 1
    v1d = kr.build(50, variant="v1d")
    assert [layer.name for layer in v1d.layers][2:5] == ["conv1_1_conv", "conv1_1_bn", "conv1_1_relu"]
    assert _block(v1d, "conv3_block1").shortcut_kind == "avgpool"


def test_cifar_option_a_shortcut_is_parameter_free_zero_padding():
    model = kr.build(20)
    block = model.get_layer("conv3_block1")
    assert block.shortcut_kind == "zeropad" and not block.shortcut_pad.weights


def test_init_and_regularization_conventions():
    model = kr.build(20, weight_decay=5e-4)
    convs = [l for l in model._flatten_layers() if isinstance(l, keras.layers.Conv2D)]
    bns = [l for l in model._flatten_layers() if isinstance(l, keras.layers.BatchNormalization)]
    dense = model.get_layer("predictions")
    assert convs and all(isinstance(c.kernel_initializer, keras.initializers.HeNormal) for c in convs)
    assert all(c.kernel_regularizer.l2 == pytest.approx(2.5e-4) for c in convs)
    assert dense.kernel_regularizer.l2 == pytest.approx(2.5e-4)
    assert all(c.bias_regularizer is None for c in convs) and dense.bias_regularizer is None
    assert all(b.momentum == 0.9 and b.epsilon == 1.001e-5 for b in bns)
    assert all(b.gamma_regularizer is None and b.beta_regularizer is None for b in bns)
    # One penalty per conv and dense kernel, nothing else.
    assert len(model.losses) == len(convs) + 1


def test_reinitialize_draws_kernels_as_keras_initializers_do():
    """He normal (truncated at 2 std) in every conv, also inside SE blocks, Glorot uniform in
    the head, the same draws for the same seed; no other variable changes."""
    from keras_resnet.builder import reinitialize

    model = kr.build(50, se_ratio=0.25, num_classes=100, input_shape=(64, 64, 3))
    before = [keras.ops.convert_to_numpy(v) for v in model.weights]
    reinitialize([model], seed=3)
    after = {v.path: keras.ops.convert_to_numpy(v) for v in model.weights}
    kernels = [l for l in model._flatten_layers() if isinstance(l, keras.layers.Conv2D)]
    assert any("se" in k.kernel.path for k in kernels)
    for layer in kernels:
        k = after[layer.kernel.path]
        std = np.sqrt(2.0 / np.prod(k.shape[:-1]))
        assert np.abs(k).max() <= 2 * std / 0.87962566103423978 + 1e-6, layer.kernel.path
        if k.size > 20_000:
            assert k.std() == pytest.approx(std, rel=0.03), layer.kernel.path
    head = after[model.get_layer("predictions").kernel.path]
    limit = np.sqrt(6.0 / sum(head.shape))
    assert np.abs(head).max() <= limit and head.std() == pytest.approx(limit / np.sqrt(3), rel=0.03)
    changed = {v.path for v, b in zip(model.weights, before) if not np.array_equal(after[v.path], b)}
    assert changed == {l.kernel.path for l in [*kernels, model.get_layer("predictions")]}
    reinitialize([model], seed=3)
    assert all(np.array_equal(keras.ops.convert_to_numpy(v), after[v.path]) for v in model.weights)


def test_bn_weight_decay_penalizes_every_gamma_and_beta_and_survives_saving(tmp_path):
    model = kr.build(20, weight_decay=0.0, bn_weight_decay=5e-4)
    bns = [l for l in model._flatten_layers() if isinstance(l, keras.layers.BatchNormalization)]
    for bn in bns:
        bn.beta.assign(np.full(bn.beta.shape, 0.5, "float32"))
    assert len(model.losses) == 2 * len(bns)
    # wd/2 * sum(gamma^2 + beta^2), with gamma = 1 and beta = 0.5 everywhere.
    channels = sum(bn.gamma.shape[0] for bn in bns)
    assert float(sum(model.losses)) == pytest.approx(2.5e-4 * channels * 1.25, rel=1e-5)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.get_layer("conv2_block1").bn_weight_decay == 5e-4
    assert float(sum(loaded.losses)) == pytest.approx(float(sum(model.losses)), rel=1e-6)


def test_negative_weight_decay_is_a_clear_error():
    with pytest.raises(ValueError, match=r"Weight decay must be >= 0.*got -0.001"):
        kr.build(20, bn_weight_decay=-1e-3)


def test_zero_init_residual_and_configurable_bn():
    model = kr.build(50, zero_init_residual=True, bn_momentum=0.99, bn_epsilon=1e-3)
    block = model.get_layer("conv2_block2")
    assert np.all(block.bn3.gamma.numpy() == 0) and np.all(block.bn1.gamma.numpy() == 1)
    assert block.bn1.momentum == 0.99 and block.bn1.epsilon == 1e-3


def test_drop_path_increases_linearly():
    model = kr.build(20, drop_path_rate=0.2)
    rates = [l.drop_path_rate for l in model.layers if isinstance(l, kr.ResidualBlock)]
    assert rates == pytest.approx(list(np.linspace(0.0, 0.2, 9)))


def test_se_blocks_add_gates():
    model = kr.build(50, se_ratio=1 / 16)
    se = model.get_layer("conv2_block1").se
    assert se.reduce.filters == 16 and se.expand.filters == 256
    assert kr.count_params(model) > 25_557_032


def test_headless_pooling_and_pyramid_outputs():
    assert kr.build(50, include_top=False).output_shape == (None, None, None, 2048)
    assert kr.build(50, include_top=False, pooling="avg").output_shape == (None, 2048)
    assert kr.build(18, include_top=False, pooling="max").output_shape == (None, 512)
    for variant in ("v1.5", "v2"):
        model = kr.build(50, variant=variant, include_top=False, pyramid_outputs=True,
                         input_shape=(224, 224, 3))
        shapes = {k: tuple(t.shape) for k, t in model.output.items()}
        assert shapes == {"P2": (None, 56, 56, 256), "P3": (None, 28, 28, 512),
                          "P4": (None, 14, 14, 1024), "P5": (None, 7, 7, 2048)}, variant
    cifar = kr.build(20, include_top=False, pyramid_outputs=True)
    assert sorted(cifar.output) == ["P0", "P1", "P2"]


def test_forward_pass_on_real_images(cifar_images):
    model = kr.build(20, include_preprocessing=True)
    probs = model.predict(cifar_images, verbose=0)
    assert probs.shape == (20, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    logits = kr.build(18, num_classes=7, input_shape=(64, 64, 3), classifier_activation=None)
    assert logits.predict(np.zeros((2, 64, 64, 3)), verbose=0).shape == (2, 7)


def test_resnext_and_wide_forward():
    for kwargs in (dict(groups=32, width_per_group=4), dict(width_per_group=128)):
        model = kr.build(50, input_shape=(32, 32, 3), num_classes=3, **kwargs)
        assert model.predict(np.random.rand(1, 32, 32, 3), verbose=0).shape == (1, 3)


def test_build_from_spec_custom_network():
    spec = kr.ResNetSpec((kr.StageSpec("basic", 64, 1), kr.StageSpec("bottleneck", 64, 1)))
    model = kr.build_from_spec(spec, num_classes=10, input_shape=(32, 32, 3))
    assert [type(l).__name__ for l in model.layers if isinstance(l, kr.ResidualBlock)] == [
        "BasicBlock", "BottleneckBlock"]
    assert model.output_shape == (None, 10)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(depth=50, input_shape=(16, 16, 3)), ValueError, r"too small.*at least 32"),
    (dict(depth=20, input_shape=(32, 32)), ValueError, r"\(height, width, channels\)"),
    (dict(depth=50, pooling="mean", include_top=False), ValueError, r"pooling must be one of"),
    (dict(depth=50, pyramid_outputs=True), ValueError, r"include_top=False"),
    (dict(depth=50, num_classes=0), ValueError, r"num_classes must be a positive integer"),
    (dict(depth=50, weights="imagenet", num_classes=10), ValueError, r"1000 classes.*include_top=False"),
    (dict(depth=18, weights="imagenet"), ValueError, r"No keras.applications weights for depth=18.*depth=50"),
    (dict(depth=50, variant="v1.5", weights="imagenet"), ValueError, r"do not fit variant='v1.5'"),
    (dict(depth=50, weights="imagenet", groups=32, width_per_group=4), ValueError, r"plain architecture"),
    (dict(depth=50, weights="/nonexistent/w.h5"), FileNotFoundError, r"not found"),
    (dict(depth=20, drop_path_rate=1.0), ValueError, r"drop_path_rate"),
])
def test_bad_input_is_a_clear_error(kwargs, error, match):
    with pytest.raises(error, match=match):
        kr.build(**kwargs)
