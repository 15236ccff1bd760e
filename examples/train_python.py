"""Train from Python with a shipped recipe; rerun the same command to resume after a crash.

    python examples/train_python.py ../shared/datasets/cifar10-jpeg --epochs 36
"""

import argparse

import keras_resnet

parser = argparse.ArgumentParser()
parser.add_argument("data", help="TFDS name (cifar10) or a folder with train/ and test/")
parser.add_argument("--recipe", default="cifar10-fast")
parser.add_argument("--epochs", type=int)
parser.add_argument("--max-train-samples", type=int)
parser.add_argument("--max-eval-samples", type=int)
parser.add_argument("--output", default="runs/python")
args = parser.parse_args()

metrics = keras_resnet.train(args.recipe, data=args.data, epochs=args.epochs, output=args.output,
                             max_train_samples=args.max_train_samples,
                             max_eval_samples=args.max_eval_samples)
print(f"test accuracy {metrics['eval']['accuracy']:.4f} after {metrics['epochs_completed']} epochs")
