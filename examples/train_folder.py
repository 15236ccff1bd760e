"""Train on your own images: a folder with train/ and test/ (or val/), one sub-folder per class.

No recipe needed: the recipe that fits the image size is chosen, and its learning-rate
schedule anneals within the epochs you give.

    python examples/train_folder.py path/to/images --epochs 20 --depth 18
"""

import argparse

import keras_resnet

parser = argparse.ArgumentParser()
parser.add_argument("folder")
parser.add_argument("--epochs", type=int, default=20)
parser.add_argument("--depth", type=int)
parser.add_argument("--max-train-samples", type=int)
parser.add_argument("--max-eval-samples", type=int)
parser.add_argument("--output", default="runs/folder")
args = parser.parse_args()

metrics = keras_resnet.train(data=args.folder, epochs=args.epochs, depth=args.depth,
                             max_train_samples=args.max_train_samples,
                             max_eval_samples=args.max_eval_samples, output=args.output)
for name, accuracy in metrics["eval"]["per_class_accuracy"].items():
    print(f"{name:20s} {accuracy:.3f}")
