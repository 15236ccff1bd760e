"""Every error the package raises on purpose; each message names the problem and the fix.

All are `ValueError`s (bad input) but `RunError`, a `RuntimeError` (a run that cannot go
on). The modules that raise them re-export their own (`data.DataError`, ...).
"""


class BackendError(ValueError):
    """A feature this backend or installation cannot run; the message names what can."""


class DataError(ValueError):
    """A dataset that cannot be used as given; the message says what to fix."""


class DistributeError(ValueError):
    """A strategy or cluster that cannot be used as given; the message says what to fix."""


class ModelError(ValueError):
    """A model file or model that cannot be used as given; the message says what to change."""


class ExportError(ValueError):
    """An export that cannot be done as asked; the message says what to change."""


class RecipeError(ValueError):
    """An unknown recipe, section or field, or a value of the wrong type."""


class RunError(RuntimeError):
    """A run that cannot go on as asked (configuration clash, NaN loss); the message says why."""


# The modules a Keras backend is, as ModuleNotFoundError names them, and the extra that installs each.
BACKEND_EXTRAS = {"tensorflow": "tensorflow", "jax": "jax", "jaxlib": "jax", "torch": "torch"}


def missing_backend(module: str) -> str:
    """The one line that says a Keras backend is not installed and which extra installs it."""
    extra = BACKEND_EXTRAS.get(module, module)
    return (
        f"keras_resnet runs on Keras, whose backend here is {extra}, which is not installed: "
        f"pip install 'keras-resnet-family[{extra}]', or install another backend's extra ([tensorflow], [jax] "
        "or [torch]) and set KERAS_BACKEND to it."
    )
