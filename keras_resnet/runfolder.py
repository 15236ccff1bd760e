"""The run folder, read: its configuration and metrics, where a run stands (`keras-resnet runs
show`), its checkpoints and what a model beside a config.json was trained on. `runs` writes it.

A run folder holds config.json (the full resolved recipe), metrics.json and history.csv
(rewritten after every epoch), checkpoints/ (the newest two: at epoch ends and, inside an
epoch, every `train.checkpoint_every_steps` steps or `train.checkpoint_every_minutes`
minutes; each written to a temporary file, fsynced and renamed), logs/ (TensorBoard), and
at the end model.keras (the final model, float32, taking RGB pixels in [0, 255] and
returning probabilities), curves.png and confusion_matrix.png.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from keras_resnet import files, plan, recipes, registry
from keras_resnet.config import RunConfig
from keras_resnet.errors import RunError


def read_config(folder: Path) -> dict | None:
    """The configuration of the run folder `folder`; None when it is new or empty.
    Raises `RunError` for a folder that holds anything else: it is never written to."""
    if not folder.exists():
        return None
    if not folder.is_dir():
        raise RunError(f"--output {folder} is a file, not a run folder; choose a new folder.")
    if not any(folder.iterdir()):
        return None
    saved = files.read_json(folder / "config.json")
    if not isinstance(saved, dict) or set(saved) != set(recipes.DEFAULTS):
        raise RunError(
            f"--output {folder} is not empty and is not a keras-resnet run folder (it has "
            "no keras-resnet config.json); nothing in it was changed. Choose a new or "
            "empty folder."
        )
    return recipes.upgrade_saved(saved)


def read_metrics(folder: Path) -> dict:
    """metrics.json of the run folder `folder` ({} when there is none yet)."""
    return files.read_json(folder / "metrics.json") or {}


def context(model_path: str | os.PathLike | None) -> dict:
    """What the run folder beside a `train` model records: data, eval crop, class names, and
    the interpolation of the weight record it was fine-tuned from.

    `crop` is the run's `data.eval_crop_fraction` (0.0: none) when the folder has a
    config.json, else None (no run configuration known)."""
    if model_path is None:
        return {}
    folder = Path(model_path).resolve().parent
    config = files.read_json(folder / "config.json")
    data = (config or {}).get("data", {})
    return {
        "data": data.get("name") or None,
        "data_dir": data.get("data_dir") or None,
        "crop": float(data.get("eval_crop_fraction") or 0.0) if config is not None else None,
        "class_names": read_metrics(folder).get("class_names"),
        "interpolation": registry.interpolation_for((config or {}).get("model", {}).get("weights")),
        "folder": folder,
    }


def default_folder(recipe: str | None) -> Path:
    """Where `train` writes when no output is given: runs/<recipe name>."""
    return Path("runs") / (Path(recipe).stem if recipe else "default")


def summary(output: str | os.PathLike, metrics: dict) -> dict:
    """The few numbers of a finished run that the CLI prints."""
    return {
        "output": str(output),
        "epochs_completed": metrics["epochs_completed"],
        "eval": {k: v for k, v in metrics.get("eval", {}).items() if k in ("accuracy", "top5_accuracy", "loss")},
    }


# -- starting, resuming, replacing -----------------------------------------------------------


def state(folder: Path) -> str:
    """ "complete" when the run in `folder` finished and saved its model, else "resume"."""
    complete = read_metrics(folder).get("status") == "complete" and (folder / "model.keras").exists()
    return "complete" if complete else "resume"


RESUME_GROUP = "keras_resnet_resume"  # in a checkpoint: the position and the state `save_weights` leaves out


def checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints, newest first."""
    return sorted(folder.glob("epoch-*.weights.h5"), key=position, reverse=True)


def position(path: Path) -> tuple[int, int]:
    """Where a checkpoint was written: (epochs completed, steps done in the next one).
    epoch-0007.weights.h5 -> (7, 0); epoch-0007-step-000050.weights.h5 -> (7, 50)."""
    parts = path.name.split(".")[0].split("-")
    return int(parts[1]), int(parts[3]) if len(parts) > 3 else 0


def damaged(path: Path) -> str | None:
    """Why the HDF5 file `path` is damaged (truncated, corrupt, unreadable data), or None
    if every dataset in it reads back whole."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            f.visititems(lambda _, item: item[()] if isinstance(item, h5py.Dataset) else None)
    except Exception as err:  # h5py raises OSError, KeyError, RuntimeError... on bad bytes
        return f"{type(err).__name__}: {' '.join(str(err).split())[:120]}"
    return None


def batches_of(path: Path) -> str | None:
    """What drew the batches of the run that wrote checkpoint `path` (None: not recorded)."""
    import h5py

    with h5py.File(path, "r") as f:
        if RESUME_GROUP not in f:
            return None
        return f[RESUME_GROUP].attrs.get("batches") or None


def where(folder: Path) -> dict:
    """Where the run in `folder` stands (`keras-resnet runs show`): its status, the epochs
    done, each checkpoint (position; intact, or why not) and whether the same `train`
    command resumes it, from where, or why not."""
    config = read_config(folder)
    if config is None:
        raise RunError(
            f"{folder} holds no run (no config.json); give the --output folder of a `keras-resnet train` run."
        )
    metrics = read_metrics(folder)
    found: list[dict[str, Any]] = [
        {"file": p.name, "epochs_completed": position(p)[0], "step": position(p)[1], "damaged": damaged(p)}
        for p in checkpoints(folder / "checkpoints")
    ]
    good = [c for c in found if c["damaged"] is None]
    shown = {
        "folder": str(folder),
        "status": metrics.get("status", "started"),
        "epochs_completed": metrics.get("epochs_completed", 0),
        "epochs": plan.total_epochs(RunConfig.from_dict(config)),
        "checkpoints": found,
    }
    if metrics.get("error"):
        shown["error"] = metrics["error"]
    if state(folder) == "complete":
        return {**shown, "can_resume": False, "why": "the run is complete (model.keras saved); nothing to resume"}
    if good and good[0]["epochs_completed"] >= shown["epochs"]:
        return {
            **shown,
            "can_resume": True,
            "why": "every epoch is trained; the same `keras-resnet train` command evaluates and saves the model",
        }
    if good:
        epoch, step = good[0]["epochs_completed"], good[0]["step"]
        return {
            **shown,
            "can_resume": True,
            "resumes_at": {"epoch": epoch + 1, "step": step + 1},
            "why": f"the same `keras-resnet train` command (or --output {folder}) resumes from {good[0]['file']}",
        }
    if found:
        return {
            **shown,
            "can_resume": False,
            "why": "every checkpoint is damaged; start anew with --overwrite or another --output",
        }
    return {
        **shown,
        "can_resume": False,
        "why": "no checkpoint was written yet; the same command starts the run again from its first step",
    }
