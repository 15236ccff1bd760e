"""Frozen stays frozen: after saving and loading (.keras and legacy .h5), with the old API's
freeze_bn, and with `trainable = False` on a nested layer, a block or a whole backbone, a
further `fit` leaves frozen weights and frozen BN statistics bit-identical."""

import keras
import numpy as np
import pytest

import keras_resnet as kr
from keras_resnet import models


def fit_once(model, images, num_classes):
    labels = np.arange(len(images)) % num_classes
    model.compile(keras.optimizers.SGD(0.5, momentum=0.9), "sparse_categorical_crossentropy")
    model.fit(images, labels, batch_size=10, epochs=1, verbose=0)


def frozen_state(model) -> dict[str, np.ndarray]:
    """Every variable of a frozen layer (weights and BN statistics), by path."""
    out = {}
    for layer in model._flatten_layers():
        if not layer.trainable:
            for v in layer.weights:
                out[v.path] = keras.ops.convert_to_numpy(v).copy()
    return out


def check_fit_keeps(model, images, num_classes, expected_frozen: int):
    before = frozen_state(model)
    assert len(before) >= expected_frozen, sorted(before)
    trainable_before = [keras.ops.convert_to_numpy(v).copy() for v in model.trainable_weights]
    fit_once(model, images, num_classes)
    after = frozen_state(model)
    assert after.keys() == before.keys()
    changed = [k for k in before if not np.array_equal(before[k], after[k])]
    assert not changed, f"frozen variables changed by fit: {changed[:5]}"
    moved = [not np.array_equal(a, keras.ops.convert_to_numpy(v))
             for a, v in zip(trainable_before, model.trainable_weights)]
    assert any(moved)  # the test can fail: the rest of the model did train


def reload(model, tmp_path, fmt):
    path = tmp_path / f"m.{fmt}"
    model.save(path)
    return keras.models.load_model(path)


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_frozen_nested_layer_and_block_survive_save_and_load(tmp_path, cifar_images, fmt):
    model = kr.build(20)
    model.get_layer("conv2_block1").bn1.trainable = False  # a BN inside a block
    model.get_layer("conv3_block2").trainable = False  # a whole block
    loaded = reload(model, tmp_path, fmt)
    assert not loaded.get_layer("conv2_block1").bn1.trainable
    block = loaded.get_layer("conv3_block2")
    assert not block.trainable and not any(layer.trainable for layer in block._flatten_layers())
    assert len(loaded.trainable_weights) == len(model.trainable_weights)
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    check_fit_keeps(loaded, cifar_images, 10, expected_frozen=4 + 10)  # bn1; the block: 2 convs, 2 BNs


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_old_api_freeze_bn_survives_a_snapshot(tmp_path, cifar_images, fmt):
    inputs = keras.Input((32, 32, 3))
    backbone = models.ResNet18(inputs, include_top=False, freeze_bn=True)
    head = keras.layers.Dense(10, activation="softmax")(keras.layers.GlobalAveragePooling2D()(
        backbone.outputs[-1]))
    model = keras.Model(inputs, head)
    loaded = reload(model, tmp_path, fmt)  # a legacy .h5 of this did not load at all
    bns = [layer for layer in loaded._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and not any(bn.trainable for bn in bns)
    check_fit_keeps(loaded, cifar_images, 10, expected_frozen=len(bns))


def test_frozen_backbone_under_a_new_head_survives_save_and_load(tmp_path, cifar_images):
    backbone = kr.build(20, include_top=False, pooling="avg")
    backbone.trainable = False
    outputs = keras.layers.Dense(5, activation="softmax", name="new_head")(backbone.output)
    model = keras.Model(backbone.input, outputs)
    loaded = reload(model, tmp_path, "keras")
    assert [v.path for v in loaded.trainable_weights] == ["new_head/kernel", "new_head/bias"]
    check_fit_keeps(loaded, cifar_images, 5, expected_frozen=19)


def test_old_api_batch_norm_keeps_a_saved_trainable_false():
    bn = kr.layers.BatchNormalization(trainable=False)
    assert not bn.trainable
    assert not kr.layers.BatchNormalization.from_config(bn.get_config()).trainable
    assert kr.layers.BatchNormalization(freeze=True).get_config()["trainable"] is False


# keras.applications' feature names and keras-hub's pyramid_outputs ------------------------------

def test_keras_applications_feature_names_give_the_block_outputs(cifar_images):
    model = kr.build(50, include_top=False, input_shape=(64, 64, 3))
    features = kr.feature_model(model, ["conv1_relu", "conv2_block3_out", "conv4_block6_out",
                                        "conv5_block3_out"])
    images = cifar_images[:2].repeat(2, axis=1).repeat(2, axis=2)  # 64x64
    out = features(images)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "conv1_relu": (2, 32, 32, 64), "conv2_block3_out": (2, 16, 16, 256),
        "conv4_block6_out": (2, 4, 4, 1024), "conv5_block3_out": (2, 2, 2, 2048)}
    # The same tensor as the model's own output, through the same weights.
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(out["conv5_block3_out"]),
                                  keras.ops.convert_to_numpy(model(images)))
    with pytest.raises(ValueError, match=r"'conv4_block6_2_relu' is not a tensor.*use a block output "
                                         r"\(conv2_block1_out … conv5_block3_out\).*P2, P3, P4, P5"):
        kr.feature_model(model, ["conv4_block6_2_relu"])


@pytest.mark.parametrize("variant", ["v1.5", "v2"])
def test_keras_hub_pyramid_outputs_contract(tmp_path, variant):
    backbone = kr.build(50, variant=variant, include_top=False, input_shape=(64, 64, 3))
    pyramid = keras.Model(backbone.inputs, backbone.pyramid_outputs)
    shapes = {k: tuple(v.shape) for k, v in pyramid(np.zeros((1, 64, 64, 3), "float32")).items()}
    assert shapes == {"P2": (1, 16, 16, 256), "P3": (1, 8, 8, 512), "P4": (1, 4, 4, 1024),
                      "P5": (1, 2, 2, 2048)}
    direct = kr.build(50, variant=variant, include_top=False, pyramid_outputs=True,
                      input_shape=(64, 64, 3))
    assert set(direct.output) == set(shapes)
    backbone.save(tmp_path / "b.keras")  # after loading, the function gives the same dict
    loaded = keras.models.load_model(tmp_path / "b.keras")
    x = np.random.default_rng(0).uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    again = keras.Model(loaded.inputs, kr.pyramid_outputs(loaded))(x)
    first = pyramid(x)
    for key in shapes:
        np.testing.assert_allclose(keras.ops.convert_to_numpy(again[key]),
                                   keras.ops.convert_to_numpy(first[key]), rtol=1e-5, atol=1e-5)
