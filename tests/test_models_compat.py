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
    # v1: the old package strides on the bottleneck's first 1x1.
    block = keras_resnet.models.ResNet50(keras.layers.Input((64, 64, 3))).get_layer("conv3_block1")
    assert block.conv1.strides == (2, 2)


def test_custom_objects_and_freezable_bn():
    assert {"BatchNormalization", "BasicBlock", "BottleneckBlock"} <= set(keras_resnet.custom_objects)
    inputs = keras.layers.Input((4, 4, 8))
    x = keras_resnet.layers.BatchNormalization(freeze=True, axis=3)(inputs)
    model = keras.Model(inputs, x)
    assert not model.trainable_weights
