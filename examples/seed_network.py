"""The seed network of the project's design notes, built with the lower-level builder.

conv stem -> BN -> ReLU -> max-pool -> one basic block (64) -> one bottleneck block
(64 -> 256) -> global average pool -> dense softmax. Trains briefly on real CIFAR-10
images when a folder is given:  python examples/seed_network.py [CIFAR10_DIR]
"""

import sys

import keras_resnet as kr

spec = kr.ResNetSpec(
    stages=(
        kr.StageSpec("basic", filters=64, repeats=1, stride=1),
        kr.StageSpec("bottleneck", filters=64, repeats=1, stride=1),  # 64 -> 256 channels
    ),
    stem="imagenet",  # 7x7/2 conv, BN, ReLU, 3x3/2 max-pool
)
model = kr.build_from_spec(spec, num_classes=10, input_shape=(32, 32, 3),
                           preprocessing="torch", name="seed_resnet")
stats = kr.model_stats(model)
print(f"{model.name}: {stats['trainable_params']:,} trainable parameters, "
      f"{stats['macs'] / 1e6:.1f} MMACs per 32x32 image")
print(" -> ".join(layer.name for layer in model.layers))

if len(sys.argv) > 1:
    import keras

    keras.utils.set_random_seed(0)
    data = keras.utils.image_dataset_from_directory(
        f"{sys.argv[1]}/test", image_size=(32, 32), batch_size=64, seed=0,
        validation_split=0.9, subset="training")  # 1,000 real test images, all classes
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    history = model.fit(data, epochs=2, verbose=2)
    print("loss per epoch:", [round(v, 4) for v in history.history["loss"]])
