"""Fine-tune an ImageNet ResNet-50 on your own classes with frozen BatchNormalization.

The backbone keeps keras.applications' weights (`--weights imagenet`, or the .h5 file's
path on an offline machine); BN layers are frozen (inference mode, not trainable), a new
softmax head is trained on images from a folder with train/ and test/ class folders.

    python examples/finetune_frozen_bn.py path/to/images --weights imagenet --size 224
"""

import argparse

import keras

import keras_resnet
from keras_resnet import data as data_lib

parser = argparse.ArgumentParser()
parser.add_argument("folder")
parser.add_argument("--weights", default="imagenet")
parser.add_argument("--size", type=int, default=224)
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--max-train-samples", type=int)
args = parser.parse_args()

splits = data_lib.load(args.folder, max_train_samples=args.max_train_samples,
                       max_eval_samples=args.max_train_samples)
backbone = keras_resnet.build(50, weights=args.weights, include_top=False, pooling="avg",
                              include_preprocessing=True, input_shape=(args.size, args.size, 3))
for layer in backbone._flatten_layers():
    if isinstance(layer, keras.layers.BatchNormalization):
        layer.trainable = False  # Keras 3: a non-trainable BN also runs in inference mode

outputs = keras.layers.Dense(splits.num_classes, activation="softmax", name="predictions")(backbone.output)
model = keras.Model(backbone.input, outputs, name="finetuned_resnet50")
model.compile(keras.optimizers.SGD(0.01, momentum=0.9), "sparse_categorical_crossentropy",
              metrics=["accuracy"])
size = (args.size, args.size)
train = data_lib.eval_pipeline(splits.train.shuffle(10_000, seed=0), batch_size=32, image_size=size,
                               fixed_size=splits.image_size == size)
test = data_lib.eval_pipeline(splits.test, batch_size=64, image_size=size,
                              fixed_size=splits.image_size == size)
model.fit(train, epochs=args.epochs, validation_data=test, verbose=2)
print(f"test accuracy {model.evaluate(test, verbose=0)[1]:.4f}")
