"""The flags of `train()` and `keras-resnet train`: the recipe field each sets and the type
the command line parses it as (the field's own type in `config`). Free of Keras-heavy
imports, so that building the command line does not load TensorFlow on another backend."""

# flag -> (section, field, type)
FLAGS: dict[str, tuple[str, str, type]] = {
    "depth": ("model", "depth", int),
    "variant": ("model", "variant", str),
    "data": ("data", "name", str),
    "data_dir": ("data", "data_dir", str),
    "epochs": ("train", "epochs", int),
    "batch_size": ("train", "batch_size", int),
    "max_train_samples": ("data", "max_train_samples", int),
    "max_eval_samples": ("data", "max_eval_samples", int),
    "seed": ("train", "seed", int),
    "precision": ("train", "precision", str),
    "lr": ("train", "lr", float),
    "weights": ("model", "weights", str),
}
# flag -> (section, field): what `recipes.resolve` sets from each
FLAG_FIELDS = {flag: (section, field) for flag, (section, field, _) in FLAGS.items()}
