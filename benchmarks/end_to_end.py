"""End to end: `keras-resnet train` vs the keras.io way, whole processes, same images.

Both train CIFAR ResNet-20 for 3 epochs on the same 10,000 real training images (a seeded,
class-balanced subset of the shared CIFAR-10 folder, linked into a temporary folder) and
evaluate on the same 2,000 test images:
- ours: `keras-resnet train --data <subset> --epochs 3` (decode once, cache, batch-level
  augmentation, prefetch, the package's precision);
- keras.io: `keras.utils.image_dataset_from_directory` + augmentation layers inside the
  model + `fit`, float32, Keras's stock BatchNormalization step
  (https://keras.io/examples/vision/image_classification_from_scratch/).
Rounds alternate; wall time of each whole process is reported.

    python benchmarks/end_to_end.py ../shared/datasets/cifar10-jpeg --rounds 2
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import ledger  # benchmarks/ledger.py: this run's record

KERAS_IO = r'''
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras, keras_resnet
root, epochs = sys.argv[1], int(sys.argv[2])
train = keras.utils.image_dataset_from_directory(f"{root}/train", image_size=(32, 32), batch_size=128, seed=0)
test = keras.utils.image_dataset_from_directory(f"{root}/test", image_size=(32, 32), batch_size=128, shuffle=False)
augment = keras.Sequential([keras.layers.RandomFlip("horizontal"), keras.layers.RandomTranslation(0.125, 0.125)])
inputs = keras.Input((32, 32, 3))
x = keras.layers.Rescaling(1 / 255.0)(augment(inputs))
backbone = keras_resnet.build(20)
for layer in backbone._flatten_layers():  # Keras's stock BatchNormalization step
    if isinstance(layer, keras_resnet.BatchNormalization):
        layer.fused = False
model = keras.Model(inputs, backbone(x))
model.compile(keras.optimizers.SGD(0.1, momentum=0.9), "sparse_categorical_crossentropy", metrics=["accuracy"])
model.fit(train, epochs=epochs, verbose=2)
print("test accuracy", model.evaluate(test, verbose=0)[1])
'''


def link_subset(source: Path, dest: Path, train_n: int, test_n: int, seed: int = 0) -> None:
    from keras_resnet.data import stratified_subset

    for split, n in (("train", train_n), ("test", test_n)):
        classes = sorted(p.name for p in (source / split).iterdir() if p.is_dir())
        files = [(f, c) for c in classes for f in sorted((source / split / c).glob("*.jpg"))]
        labels = np.array([classes.index(c) for _, c in files])
        for i in stratified_subset(labels, n, seed):
            f, c = files[i]
            (dest / split / c).mkdir(parents=True, exist_ok=True)
            (dest / split / c / f.name).symlink_to(f.resolve())


def timed(cmd) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if result.returncode:
        raise SystemExit(f"{cmd[:3]} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start, result.stdout


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("--train-images", type=int, default=10_000)
    parser.add_argument("--test-images", type=int, default=2_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        subset = Path(tmp) / "subset"
        link_subset(Path(args.data), subset, args.train_images, args.test_images)
        times = {"ours": [], "keras_io": []}
        accuracy = {}
        for r in range(args.rounds):
            seconds, out = timed([sys.executable, "-m", "keras_resnet.cli", "train", "--data", str(subset),
                                  "--epochs", str(args.epochs), "--output", f"{tmp}/run{r}"])
            times["ours"].append(seconds)
            accuracy["ours"] = json.loads(out.strip().splitlines()[-1])["eval"]["accuracy"]
            seconds, out = timed([sys.executable, "-c", KERAS_IO, str(subset), str(args.epochs)])
            times["keras_io"].append(seconds)
            accuracy["keras_io"] = float(out.strip().splitlines()[-1].split()[-1])
    result = {"train_images": args.train_images, "epochs": args.epochs,
              "seconds": {k: [round(t, 1) for t in v] for k, v in times.items()},
              "best_speedup": round(min(times["keras_io"]) / min(times["ours"]), 3),
              "median_speedup": round(statistics.median(times["keras_io"]) / statistics.median(times["ours"]), 3),
              "test_accuracy_last_round": accuracy}
    print(json.dumps(result, indent=2))
    ledger.record("end_to_end", "keras-resnet train against the keras.io way, whole process", figures=result)


if __name__ == "__main__":
    main()
