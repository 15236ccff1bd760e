"""Training-step throughput: keras_resnet's default step vs a plain float32 Keras ResNet-20.

Both train CIFAR ResNet-20 (same architecture, 269,722 parameters) on the same in-memory
images. "ours" is what `keras-resnet train` compiles on this machine (precision and XLA
chosen by the package, fused BatchNormalization, tf.data input); "ours-float32" is the same
step with the precision forced to float32 (to separate the two levers); "ours-eps1e-5" is
the default step with BN epsilon 1e-5, below the 1.001e-5 that TensorFlow's fused kernel
trains with, so BN takes the unfused path (what a recipe with `bn_epsilon = 1e-5` costs);
"plain" is `compile(optimizer="sgd", ...)` with `fit(x, y, batch_size=128)` in float32 and
Keras's stock BatchNormalization step. Rounds alternate; each times whole epochs after a
warm-up epoch, and the report compares best and median epochs (this machine stalls at
random, so means mislead).

    python benchmarks/train_step.py --images 10000 --rounds 3 --epochs 2
"""

import argparse
import json
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_resnet  # noqa: E402
from keras_resnet import recipes, training  # noqa: E402


def ours(x, y, batch_size, precision="auto", bn_epsilon=None):
    config = recipes.load("cifar10-fast")
    config["train"].update(batch_size=batch_size, precision=precision)
    if bn_epsilon is not None:
        config["model"]["bn_epsilon"] = bn_epsilon
    model, _, precision = training.build_compiled(
        config, num_classes=10, image_size=(32, 32), normalization=((125.0,) * 3, (63.0,) * 3),
        steps_per_epoch=len(x) // batch_size)
    data = tf.data.Dataset.from_tensor_slices((x, np.eye(10, dtype="float32")[y]))
    data = data.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return model, lambda: model.fit(data, epochs=1, verbose=0), precision


def plain(x, y, batch_size):
    model = keras_resnet.build(20, weight_decay=0.0)  # same architecture, float32
    for layer in model._flatten_layers():  # and Keras's stock BatchNormalization step
        if isinstance(layer, keras_resnet.BatchNormalization):
            layer.fused = False
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model, lambda: model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0), "float32"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per round and contender")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (args.images, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, args.images)
    contenders = {"ours": ours(x, y, args.batch_size),
                  "ours-float32": ours(x, y, args.batch_size, "float32"),
                  "ours-eps1e-5": ours(x, y, args.batch_size, bn_epsilon=1e-5),
                  "plain": plain(x, y, args.batch_size)}
    for _, step, _ in contenders.values():
        step()  # warm-up epoch: tracing and compilation
    times = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, (_, step, _) in contenders.items():
            for _ in range(args.epochs):
                start = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - start)
    ips = {name: [args.images // args.batch_size * args.batch_size / t for t in ts] for name, ts in times.items()}
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
        "settings": {name: c[2] for name, c in contenders.items()},
        "images_per_sec_best": {n: round(max(v), 1) for n, v in ips.items()},
        "images_per_sec_median": {n: round(statistics.median(v), 1) for n, v in ips.items()},
    }
    result["speedup_best"] = round(result["images_per_sec_best"]["ours"] / result["images_per_sec_best"]["plain"], 3)
    result["speedup_median"] = round(result["images_per_sec_median"]["ours"] / result["images_per_sec_median"]["plain"], 3)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
