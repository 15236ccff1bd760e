"""Loading a saved `.keras` model: the package's layers (and the old API's model class) are
registered before Keras reads the file, and safe mode stays on."""

from __future__ import annotations

import os
from pathlib import Path

import keras

from keras_resnet import layers, models  # noqa: F401  (registers the classes saved files name)
from keras_resnet.errors import ModelError


def load_model(path: str | os.PathLike) -> keras.Model:
    """A `.keras` model file, loaded in safe mode (our layers are registered on import)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"Model file {path} not found.")
    try:
        return keras.models.load_model(path)
    except Exception as err:
        if "safe_mode" in str(err):
            raise ModelError(
                f"{path} is not a loadable .keras model in safe mode: it holds a "
                "Lambda layer (arbitrary Python code). Rebuild the model without it; "
                "safe mode stays on."
            ) from err
        raise ModelError(
            f"{path} is not a loadable .keras model ({type(err).__name__}: "
            f"{' '.join(str(err).split())[:200]}). Pass a model saved with "
            "model.save('model.keras'), e.g. run/model.keras from `train`."
        ) from err
