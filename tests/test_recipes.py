import pytest

from keras_resnet import backends, recipes, training
from conftest import CIFAR_DIR


def test_every_shipped_recipe_loads_and_resolves():
    names = recipes.available()
    assert {"cifar10-fast", "cifar10-seed", "cifar10-resnet20", "cifar10-resnet32", "cifar10-resnet44",
            "cifar10-resnet56", "cifar10-resnet110", "imagenet-resnet50"} <= set(names)
    for name in names:
        config = recipes.load(name)
        assert config["recipe"]["name"] == name and names[name]
    he = recipes.load("cifar10-resnet110")
    assert (he["train"]["epochs"], he["train"]["lr"], he["model"]["weight_decay"], he["train"]["boundaries"],
            he["train"]["warmup_epochs"]) == (164, 0.1, 1e-4, [0.5, 0.75], 1.0)
    seed = recipes.load("cifar10-seed")
    assert (seed["train"]["epochs"], seed["model"]["weight_decay"], seed["augment"]["rotation"]) == (150, 5e-4, 10.0)
    imagenet = recipes.load("imagenet-resnet50")
    assert imagenet["model"]["zero_init_residual"] and imagenet["train"]["label_smoothing"] == 0.1
    assert imagenet["data"]["eval_crop_fraction"] == 0.875


def test_flags_and_overrides_win_in_order():
    config = recipes.resolve("cifar10-fast", ["train.epochs=3", "augment.rotation=5"],
                                     epochs=7, batch_size=64)
    assert config["train"]["epochs"] == 3 and config["train"]["batch_size"] == 64
    assert config["augment"]["rotation"] == 5.0


def test_auto_or_bool_fields_take_auto_true_and_false_from_the_command_line():
    config = recipes.resolve("cifar10-fast", ["train.jit_compile=false", "data.on_device=true"])
    assert config["train"]["jit_compile"] is False and config["data"]["on_device"] is True
    config = recipes.resolve("cifar10-fast", ["train.jit_compile=true", "data.on_device='auto'"])
    assert config["train"]["jit_compile"] is True and config["data"]["on_device"] == "auto"
    with pytest.raises(recipes.RecipeError, match="data.on_device must be 'auto', true or false"):
        recipes.resolve("cifar10-fast", ["data.on_device=1"])


def test_bn_weight_decay_override_reaches_the_model():
    config = recipes.resolve("cifar10-fast", ["model.bn_weight_decay=5e-4"])
    model = training.build_model(config, num_classes=10, image_size=(32, 32))
    assert model.get_layer("conv1_bn").gamma_regularizer.l2 == 2.5e-4
    assert model.get_layer("conv4_block3").bn2.beta_regularizer.l2 == 2.5e-4
    default = training.build_model(recipes.resolve("cifar10-fast"), num_classes=10,
                                   image_size=(32, 32))
    assert default.get_layer("conv4_block3").bn2.beta_regularizer is None


def test_model_fields_are_builds_keywords_with_one_default_each():
    """[model] holds `build()`'s keywords with `build()`'s defaults ("" or 0 for its None),
    and the blocks default to the same values: one default per hyperparameter."""
    import inspect

    from keras_resnet import build, layers

    params = inspect.signature(build).parameters
    for key, value in recipes.DEFAULTS["model"].items():
        assert key in params, key
        default = params[key].default
        if key == "bn_epsilon":  # build()'s None: the weights' own, else layers.BN_EPSILON
            assert default is None and value == layers.BN_EPSILON
        elif key != "depth":
            assert value == (recipes.UNSET[key] if default is None else default), key
    block = inspect.signature(layers.ResidualBlock.__init__).parameters
    for key in ("weight_decay", "bn_weight_decay", "bn_momentum", "zero_init_residual"):
        assert block[key].default == params[key].default, key
    assert block["bn_epsilon"].default == layers.BN_EPSILON
    assert inspect.signature(layers.SqueezeExcite.__init__).parameters["weight_decay"].default == \
        params["weight_decay"].default
    kwargs = recipes.build_kwargs(recipes.load("cifar10-fast"))
    assert kwargs["weight_decay"] == 5e-4 and kwargs["variant"] is None and kwargs["se_ratio"] is None
    assert build(**{**kwargs, "weights": None}).get_layer("conv1_conv").kernel_regularizer.l2 == 2.5e-4


def test_fields_that_moved_section_still_read():
    """Recipes, overrides and run folders written before weight decay moved to [model] and
    freeze_bn/sync_bn to [train] keep working, and say where the field is now."""
    config = recipes.resolve("cifar10-fast", ["train.weight_decay=3e-4", "model.freeze_bn=true"])
    assert config["model"]["weight_decay"] == 3e-4 and config["train"]["bn_mode"] == "frozen"
    assert "weight_decay" not in config["train"] and "freeze_bn" not in config["model"]
    assert recipes.resolve("cifar10-fast", ["train.freeze_bn=false"])["train"]["bn_mode"] == "train"
    with pytest.raises(recipes.RecipeError, match=r"train.head_epochs is gone: the head phase is measured "
                                                  r"in steps now: set train.head_steps"):
        recipes.resolve("cifar10-fast", ["train.head_epochs=2"])
    old = recipes.load("cifar10-fast")
    old["train"]["bn_weight_decay"] = old["model"].pop("bn_weight_decay")
    old["model"]["sync_bn"] = old["train"].pop("sync_bn")
    assert recipes.upgrade(old) == recipes.load("cifar10-fast")
    with pytest.raises(recipes.RecipeError, match=r"model.weight_decay must be >= 0"):
        recipes.resolve("cifar10-fast", ["train.weight_decay=-1"])


def test_without_recipe_the_data_picks_it():
    config = recipes.resolve(None, data=str(CIFAR_DIR), epochs=5)
    assert config["recipe"]["name"] == "cifar10-fast" and config["train"]["epochs"] == 5
    assert recipes.resolve(None, data=str(CIFAR_DIR), weights="m.keras")["recipe"]["name"] == "finetune"


def test_a_weight_records_crop_is_applied_at_its_eval_size_and_zero_means_no_crop():
    """`data.eval_crop_fraction = 0` used to be replaced by the record's crop, and that crop,
    defined at the record's eval size, applied at its train size."""
    from keras_resnet import registry

    record = registry.get_weights("resnet50.tv2_in1k")
    assert record.train_size != record.eval_size
    tag = dict(weights=record.name, data=str(CIFAR_DIR))
    config = recipes.resolve("finetune", **tag)
    assert config["data"]["image_size"] == [record.eval_size] * 2
    assert config["data"]["eval_crop_fraction"] == record.crop_pct
    config = recipes.resolve("finetune", ["data.eval_crop_fraction=0"], **tag)
    assert config["data"]["eval_crop_fraction"] == 0.0
    assert recipes.resolve("cifar10-fast")["data"]["eval_crop_fraction"] == 0.0  # -1 without a record: none


@pytest.mark.parametrize("call, match", [
    (lambda: recipes.load("cifar10-slow"), r"Unknown recipe 'cifar10-slow'.*cifar10-fast"),
    (lambda: recipes.merge(recipes.DEFAULTS, {"train": {"epoch": 3}}, "x"), r"unknown field train.epoch"),
    (lambda: recipes.merge(recipes.DEFAULTS, {"optim": {}}, "x"), r"unknown section \[optim\]"),
    (lambda: recipes.merge(recipes.DEFAULTS, {"train": {"epochs": "ten"}}, "x"), r"train.epochs must be a int"),
    (lambda: recipes.merge(recipes.DEFAULTS, {"model": {"bn_weight_decay": -1e-4}}, "x"),
     r"model.bn_weight_decay must be >= 0"),
    (lambda: recipes.parse_override("epochs=3"), r"section.field=value"),
    (lambda: recipes.resolve("cifar10-fast", bogus=1), r"Unknown option"),
    (lambda: backends.resolve_precision("fp8"), r"train.precision"),
])
def test_bad_recipes_are_clear_errors(call, match):
    with pytest.raises(recipes.RecipeError, match=match):
        call()


def test_every_shipped_recipes_augment_section_changes_real_images(cifar_images):
    """The [augment] section of each shipped recipe, as `train` passes it on, builds an
    augmenter that really alters real images and keeps their shape and range."""
    import numpy as np
    import tensorflow as tf

    from keras_resnet import augment

    for name in recipes.available():
        fields = {k: v for k, v in recipes.load(name)["augment"].items() if k != "random_resized_crop"}
        fn = augment.build_augmenter(fields)
        assert fn is not None, name
        out, _ = fn(tf.constant(cifar_images), tf.one_hot(np.arange(20) % 10, 10), augment.position_key(0))
        out = out.numpy()
        assert out.shape == cifar_images.shape and 0 <= out.min() and out.max() <= 255 + 1e-3, name
        changed = np.abs(out - cifar_images).mean(axis=(1, 2, 3)) > 0
        # flip alone changes about half the images; with pad-crop (81 offsets) nearly all
        assert changed.mean() >= (0.9 if fields["pad_crop"] else 0.25), (name, changed.mean())
