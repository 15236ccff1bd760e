"""Fine-tune pretrained weights on your own image folder with the `finetune` recipe.

    python examples/finetune.py path/to/images --weights imagenet --depth 50 --size 224
    python examples/finetune.py path/to/images --weights runs/pretrained/model.keras --depth 20

The folder holds train/ and test/ (or val/), one sub-folder per class. Training runs in
two phases: the new head alone (backbone frozen, BN in inference mode), then the whole
network with its own warm-up and cosine schedule. The `finetune` recipe picks the head
length, epochs, learning rate, BN mode, weight decay and augmentation from the number and
size of the images (printed first, recorded in config.json); --epochs overrides its epochs.
The run folder (--output) resumes after a crash and exports like any other.
"""

import argparse

import keras_resnet

parser = argparse.ArgumentParser()
parser.add_argument("folder")
parser.add_argument("--weights", required=True, help="a .keras model from `train`, 'imagenet' or a weights file")
parser.add_argument("--depth", type=int, default=50)
parser.add_argument("--size", type=int, help="input side (default: the images' own)")
parser.add_argument("--epochs", type=int, help="epochs of the whole network (default: picked from the data)")
parser.add_argument("--head-steps", type=int, help="steps of the head alone (default: picked from the data)")
parser.add_argument("--max-train-samples", type=int)
parser.add_argument("--output", default="runs/finetune")
args = parser.parse_args()

overrides = [f"train.head_steps={args.head_steps}"] if args.head_steps is not None else []
if args.size:
    overrides.append(f"data.image_size=[{args.size}, {args.size}]")
metrics = keras_resnet.train(
    "finetune", weights=args.weights, data=args.folder, depth=args.depth, epochs=args.epochs,
    max_train_samples=args.max_train_samples, max_eval_samples=args.max_train_samples,
    overrides=overrides, output=args.output)
print(f"test accuracy {metrics['eval']['accuracy']:.4f}")
