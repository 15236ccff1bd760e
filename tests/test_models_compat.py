"""Code written against the old keras-resnet API (broadinstitute), e.g. keras-retinanet."""

import keras
import numpy as np

import keras_resnet
import keras_resnet.models


def test_retinanet_style_backbone():
    # As keras-retinanet builds its backbone:
    inputs = keras.layers.Input(shape=(None, None, 3))
    resnet = keras_resnet.models.ResNet50(inputs, include_top=False, freeze_bn=True)
    C3, C4, C5 = resnet.outputs[1:]
    assert [tuple(t.shape)[-1] for t in resnet.outputs] == [256, 512, 1024, 2048]
    outputs = resnet.predict(np.random.rand(1, 128, 96, 3), verbose=0)
    assert [o.shape[1:3] for o in outputs] == [(32, 24), (16, 12), (8, 6), (4, 3)]
    bns = [l for l in resnet._flatten_layers() if isinstance(l, keras.layers.BatchNormalization)]
    assert bns and not any(bn.trainable for bn in bns)
    assert len(resnet.trainable_weights) == len(
        [l for l in resnet._flatten_layers() if isinstance(l, keras.layers.Conv2D)])


def test_classifier_and_custom_blocks():
    inputs = keras.layers.Input(shape=(64, 64, 3))
    model = keras_resnet.models.ResNet18(inputs, classes=10)
    assert model.output_shape == (None, 10)
    deep = keras_resnet.models.ResNet101(keras.layers.Input((64, 64, 3)), blocks=[1, 1, 1, 1],
                                         include_top=False)
    assert len(deep.outputs) == 4
    # v1: the old package strides on the bottleneck's first 1x1, and names layers as it did.
    model = keras_resnet.models.ResNet50(keras.layers.Input((64, 64, 3)))
    assert model.get_layer("res3a_branch2a").strides == (2, 2)
    assert model.get_layer("res3a_branch2b").strides == (1, 1)
    assert [l.name for l in model.layers if l.weights][:3] == ["conv1", "bn_conv1", "res2a_branch2a"]
    assert len(model.weights) == 53 + 53 * 4 + 2  # 53 bias-free convs, their BNs, fc1000
    # ResNet-101/152/200 number their blocks after the first, as the old package did.
    assert "res4b22_branch2c" in [l.name for l in keras_resnet.models.ResNet101(keras.Input((64, 64, 3))).layers]


def test_custom_objects_and_freezable_bn():
    assert {"BatchNormalization", "BasicBlock", "BottleneckBlock"} <= set(keras_resnet.custom_objects)
    inputs = keras.layers.Input((4, 4, 8))
    x = keras_resnet.layers.BatchNormalization(freeze=True, axis=3)(inputs)
    model = keras.Model(inputs, x)
    assert not model.trainable_weights


def test_keras_retinanets_own_keywords_are_accepted():
    """keras-retinanet builds `ResNet50(inputs, include_top=False, trainable_bn=False)`."""
    inputs = keras.layers.Input(shape=(None, None, 3))
    resnet = keras_resnet.models.ResNet50(inputs, include_top=False, trainable_bn=False, numerical_names=[False] * 4)
    bns = [l for l in resnet._flatten_layers() if isinstance(l, keras.layers.BatchNormalization)]
    assert bns and not any(bn.trainable for bn in bns)
    trainable = keras_resnet.models.ResNet18(keras.layers.Input((32, 32, 3)), include_top=False, trainable_bn=True)
    assert all(bn.trainable for bn in trainable._flatten_layers() if isinstance(bn, keras.layers.BatchNormalization))


def test_a_legacy_h5_full_model_save_loads_again_with_its_frozen_layers(tmp_path):
    """keras-retinanet saves snapshots with `model.save("x.h5")`; they load without custom
    objects, frozen layers and `freeze_bn` kept, the outputs the same."""
    model = keras_resnet.models.ResNet50(keras.layers.Input((64, 64, 3)), include_top=False, freeze_bn=True)
    model.get_layer("res2a_branch2a").trainable = False
    model.save(tmp_path / "snapshot.h5")
    loaded = keras.models.load_model(tmp_path / "snapshot.h5")
    assert type(loaded).__name__ == "ResNetModel" and not loaded.get_layer("res2a_branch2a").trainable
    bns = [l for l in loaded._flatten_layers() if isinstance(l, keras.layers.BatchNormalization)]
    assert bns and not any(bn.trainable for bn in bns)
    x = np.random.default_rng(0).random((2, 64, 64, 3)).astype("float32")
    for a, b in zip(model.predict(x, verbose=0), loaded.predict(x, verbose=0)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_names_and_stems_are_the_old_packages_and_a_weights_file_keeps_its_stem(tmp_path):
    """The old package numbered blocks after the first unless told not to (ResNet50 was):
    ResNet18 has `res2b1`. A `.weights.h5` of a model with keras.applications' stem (pool1
    "valid") builds that stem again, and is refused by a model with the old stem."""
    names = [layer.name for layer in keras_resnet.models.ResNet18(keras.layers.Input((64, 64, 3))).layers]
    assert "res2b1_branch2a" in names and "res2b_branch2a" not in names
    inputs = keras.layers.Input((64, 64, 3))
    applications = keras.applications.ResNet50(weights=None, input_tensor=inputs)
    source = tmp_path / "kapps.h5"
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(source, "w") as f:  # a legacy .h5 of keras.applications' layout
        legacy_h5_format.save_weights_to_hdf5_group(f, applications)
    model = keras_resnet.models.ResNet50(keras.layers.Input((64, 64, 3)), weights=str(source))
    assert model.get_layer("pool1").padding == "valid"
    saved = tmp_path / "tuned.weights.h5"
    keras_resnet.save_weights(model, saved)
    again = keras_resnet.models.ResNet50(keras.layers.Input((64, 64, 3)), weights=str(saved))
    assert again.get_layer("pool1").padding == "valid"
    x = np.random.default_rng(0).random((1, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(model.predict(x, verbose=0), again.predict(x, verbose=0), rtol=1e-6, atol=1e-6)
    default = keras_resnet.models.ResNet50(keras.layers.Input((64, 64, 3)), bn_epsilon=1.001e-5)  # pool1 alone differs
    import pytest

    with pytest.raises(ValueError, match=r"was saved from another architecture: layer 'pool1' differs in padding "
                                         r"\('valid' there, 'same' here\)"):
        default.load_weights(str(saved))
