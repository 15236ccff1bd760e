"""The plan of a run: its phases (a fine-tune's head phase, then the whole network), where
an epoch index falls in them, the BatchNormalization modes, and the hyperparameters the
`finetune` recipe picks from the data. Training and `keras-resnet runs show` both read it."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from keras_resnet.config import RunConfig


@dataclasses.dataclass(frozen=True)
class Phase:
    """Epochs [start, end) of one training phase ("head" or "all"), `steps` per epoch."""

    name: str
    start: int
    end: int
    steps: int


def phases(config: RunConfig | dict, steps_per_epoch: int) -> list[Phase]:
    """The phases of the run `config` describes: the head phase, when fine-tuning with
    `train.head_steps`, is one epoch of that many steps; then `train.epochs` of the whole
    network (none with `train.epochs = 0`: a linear probe)."""
    config = RunConfig.of(config)
    head = config.train.head_steps if config.model.weights else 0
    epochs = config.train.epochs
    first = [Phase("head", 0, 1, head)] if head else []
    return first + ([Phase("all", len(first), len(first) + epochs, steps_per_epoch)] if epochs else [])


def total_epochs(config: RunConfig) -> int:
    """The epochs a run records in its history: the head phase counts as one."""
    plan = phases(config, 1)
    return plan[-1].end if plan else 0


def phase_of(plan: Sequence[Phase], epoch: int) -> Phase:
    """The phase that trains epoch index `epoch` (the last phase for the end of the run)."""
    return next((p for p in plan if p.start <= epoch < p.end), plan[-1])


def resume_phase(plan: Sequence[Phase], epoch: int, step: int) -> Phase:
    """The phase a checkpoint at (`epoch` epochs done, `step` steps of the next) was written
    in: the next epoch's inside an epoch, the finished epoch's at an epoch end."""
    return phase_of(plan, epoch if step else max(epoch - 1, 0))


# -- the hyperparameters the `finetune` recipe picks --------------------------------------------


def pick(num_train: int, image_side: int, batch_size: int) -> tuple[dict, str]:
    """[train]/[augment]/[model] values for fine-tuning on `num_train` images of `image_side`
    pixels at (global) `batch_size`, and one line saying what was picked and why. The
    learning rates are for batch 64 (`reference_batch`); `train` scales them linearly.

    The rules (docs/training.md has the reasoning and the measurements behind them):
    - the head phase trains the new classifier alone for about two passes over the data
      (50-300 steps) before the backbone moves (LP-FT, Kumar et al. 2022: a trained head
      keeps the features from being distorted by a random one);
    - the whole network then trains for at least 30 epochs or 600 steps, whichever is more
      (BiT's HyperRule fixes steps, not epochs, for small sets);
    - the learning rate grows with the data, from 0.01 to scratch's 0.05 at batch 64
      (Li et al. 2020: the best fine-tuning rate rises as the target moves away from the
      source and grows), scaled linearly with the batch;
    - BN trains its statistics when a batch holds 16 or more images, and otherwise keeps
      them fixed after re-estimating them on the target images;
    - augmentation: pad-and-crop plus flip for small images, random-resized crop plus flip
      for large ones; weight decay 5e-4 (the CIFAR recipes') below 64 px, else 1e-4;
    - the test split is scored about six times in the run, not after every short epoch.
    """
    steps_per_epoch = max(1, num_train // batch_size)
    head_steps = int(min(300, max(50, 2 * steps_per_epoch)))
    epochs = int(max(30, math.ceil(600 / steps_per_epoch)))
    fraction = min(1.0, max(0.0, math.log10(max(num_train, 1) / 250) / math.log10(100)))
    lr_at_64 = 0.01 * (0.05 / 0.01) ** fraction  # 0.01 at 250 images, 0.05 from 25,000 on
    small = image_side <= 64
    picked = {
        "train": {
            "head_steps": head_steps,
            "head_lr": 0.1,
            "epochs": epochs,
            "lr": round(lr_at_64, 4),
            "reference_batch": 64,
            "backbone_lr_scale": 1.0,
            "warmup_epochs": min(2.0, 0.1 * epochs),  # of the epochs run
            "bn_mode": "train" if batch_size >= 16 else "frozen_stats",
            "validate_every": max(1, epochs // 6),
        },
        "augment": {"flip": True, "pad_crop": image_side // 8 if small else 0, "random_resized_crop": not small},
        "model": {"weight_decay": 5e-4 if small else 1e-4},
    }
    t = picked["train"]
    why = (
        f"finetune picked for {num_train} images of {image_side} px at batch {batch_size}: "
        f"head {head_steps} steps at lr {t['head_lr']}, then {epochs} epochs at lr {t['lr']} "
        f"(both x batch/64) after a warm-up of 10 % of them (at most 2), bn_mode {t['bn_mode']}, "
        f"weight decay {picked['model']['weight_decay']:g}, "
        + ("pad-crop + flip" if small else "random-resized crop + flip")
    )
    return picked, why
