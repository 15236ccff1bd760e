"""keras_resnet: the ResNet family for Keras 3. Public API, re-exported."""

from keras_resnet.errors import BACKEND_EXTRAS, missing_backend

try:  # Keras imports the framework of its backend (KERAS_BACKEND, default tensorflow) at once
    import keras as _keras  # noqa: F401
except ModuleNotFoundError as _missing:
    if _missing.name not in BACKEND_EXTRAS:
        raise
    # A base install (`pip install .`) imports; each feature asked for names the extra to add.
    _NO_BACKEND: str | None = missing_backend(_missing.name)
else:
    _NO_BACKEND = None

if _NO_BACKEND is None:
    from keras_resnet import layers, models, registry
    from keras_resnet.builder import build, build_from_spec
    from keras_resnet.converters import save_weights as save_weights
    from keras_resnet.features import feature_model, feature_tensor, pyramid_outputs
    from keras_resnet.layers import (
        BasicBlock,
        BatchNormalization,
        BottleneckBlock,
        DropPath,
        PreActBasicBlock,
        PreActBottleneckBlock,
        Preprocessing,
        ResidualBlock,
        SqueezeExcite,
        ZeroPadShortcut,
    )
    from keras_resnet.registry import list_models, list_weights
    from keras_resnet.specs import ResNetSpec, StageSpec, resnet_spec
    from keras_resnet.summary import count_macs, count_params, model_stats
    from keras_resnet.weights import load_weights, preprocess_input

__version__ = "0.1.0"

# These modules load on first use: `import keras_resnet` stays light, and does not import
# TensorFlow on the JAX and PyTorch backends.
_LAZY = {
    "train": "training",
    "evaluate_model": "evaluation",
    "benchmark": "benchmarking",
    "recipes": "recipes",
    "training": "training",
    "data": "data",
    "export": "exporter",
    "exporter": "exporter",
    "parity": "parity",
    "evaluation": "evaluation",
    "runs": "runs",
    "benchmarking": "benchmarking",
}


def __getattr__(name: str):
    if _NO_BACKEND is not None and (name in __all__ or name in _LAZY or name == "save_weights"):
        raise ImportError(f"keras_resnet.{name}: {_NO_BACKEND}")
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f"keras_resnet.{_LAZY[name]}")
        return module if name == _LAZY[name] else getattr(module, name)
    raise AttributeError(f"module 'keras_resnet' has no attribute {name!r}")


if _NO_BACKEND is None:
    # What `keras.models.load_model(..., custom_objects=keras_resnet.custom_objects)` needs
    # (old keras-resnet API; the layers are also registered, so it is optional).
    custom_objects = {
        cls.__name__: cls
        for cls in (
            BasicBlock,
            BottleneckBlock,
            PreActBasicBlock,
            PreActBottleneckBlock,
            ZeroPadShortcut,
            SqueezeExcite,
            DropPath,
            Preprocessing,
            BatchNormalization,
        )
    }

__all__ = [
    "BasicBlock",
    "BatchNormalization",
    "BottleneckBlock",
    "DropPath",
    "PreActBasicBlock",
    "PreActBottleneckBlock",
    "Preprocessing",
    "ResNetSpec",
    "ResidualBlock",
    "SqueezeExcite",
    "StageSpec",
    "ZeroPadShortcut",
    "benchmark",
    "build",
    "build_from_spec",
    "count_macs",
    "count_params",
    "custom_objects",
    "evaluate_model",
    "export",
    "feature_model",
    "feature_tensor",
    "layers",
    "list_models",
    "list_weights",
    "load_weights",
    "model_stats",
    "models",
    "preprocess_input",
    "pyramid_outputs",
    "registry",
    "resnet_spec",
    "train",
]
