"""The fine-tune backbone is the pretrained model itself: its normalization or preprocessing,
frozen layers and architecture come along; copies between models refuse any architecture
difference; the hyperparameters `finetune` picks follow the data."""

import json

import keras
import numpy as np
import pytest

import keras_resnet as kr
from conftest import CIFAR_DIR, small_cifar_folder
from keras_resnet import finetune, plan as plan_lib, recipes, training


def config_for(source, **train) -> dict:
    config = recipes.resolve("finetune", [f"train.{k}={json.dumps(v)}" for k, v in train.items()],
                             weights=str(source), data=str(CIFAR_DIR))
    return config


def features(model, x):
    """The pooled features a model's classifier reads."""
    return keras.Model(model.input, finetune.pooled_features(model))(x, training=False)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Saved CIFAR ResNet-8s: one with a `normalization` layer (as `train` saves), one with a
    `preprocessing` layer (as a fine-tune of a tag or file saves), one with a frozen block."""
    folder = tmp_path_factory.mktemp("sources")
    rng = np.random.default_rng(0)
    out = {}
    for name, kwargs in (("normalization", dict(normalization=([120.0, 110.0, 100.0], [60.0, 55.0, 50.0]))),
                         ("preprocessing", dict(include_preprocessing=True)), ("frozen", {})):
        model = kr.build(8, variant="cifar", **kwargs)
        for v in model.weights:  # non-trivial statistics, so a lost layer shows
            if "moving" in v.path:
                v.assign(rng.uniform(0.3, 1.5, v.shape).astype("float32"))
        if name == "frozen":
            model.get_layer("conv3_block1").trainable = False
        model.save(folder / f"{name}.keras")
        out[name] = folder / f"{name}.keras"
    return out


@pytest.mark.parametrize("kind", ["normalization", "preprocessing"])
def test_the_backbone_keeps_the_sources_input_normalization(sources, cifar_images, kind):
    """Fine-tuning a fine-tuned model (a `preprocessing` layer) fed raw pixels to the weights."""
    source = keras.models.load_model(sources[kind])
    model = finetune.build_pretrained(config_for(sources[kind]), num_classes=3, image_size=(32, 32))
    assert any(layer.name == kind for layer in model.layers)
    np.testing.assert_allclose(features(model, cifar_images), features(source, cifar_images), rtol=1e-5, atol=1e-5)
    assert model.output_shape == (None, 3)


def test_layers_frozen_in_the_source_stay_frozen_in_every_phase_and_when_saved(sources):
    config = config_for(sources["frozen"])
    model = finetune.build_pretrained(config, num_classes=3, image_size=(32, 32))
    plan = plan_lib.phases(config, steps_per_epoch=10)
    assert [p.name for p in plan] == ["head", "all"] and plan[0].steps == config["train"]["head_steps"]
    block = model.get_layer("conv3_block1")
    for phase in plan:
        finetune.set_trainable(model, phase, "train")
        assert not block.trainable and not any(layer.trainable for layer in block._flatten_layers())
    assert model.get_layer("conv2_block1").trainable  # the rest trains in phase "all"
    finetune.unfreeze_for_saving(model)
    path = sources["frozen"].parent / "finetuned.keras"
    finetune.recast(model, "float32").save(path)
    saved = keras.models.load_model(path)
    block = saved.get_layer("conv3_block1")
    assert not block.trainable and not any(layer.trainable for layer in block._flatten_layers())
    assert saved.get_layer("conv4_block1").trainable and saved.get_layer("conv4_block1").conv1.trainable


def test_recast_to_float32_copies_a_mixed_precision_model_uncompiled():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = kr.build(8, variant="cifar")
    finally:
        keras.config.set_dtype_policy(previous)
    model.compile("sgd", "categorical_crossentropy")
    copy = finetune.recast(model, "float32")
    assert model.get_layer("conv2_block1").conv1.compute_dtype == "bfloat16"
    assert all(layer.compute_dtype == "float32" for layer in copy._flatten_layers(include_self=False))
    assert not copy.compiled and getattr(copy, "optimizer", None) is None
    theirs = {v.path: v.numpy() for v in model.weights}
    assert {v.path for v in copy.weights} == theirs.keys()
    for v in copy.weights:  # float32 variables either way: copied exactly
        np.testing.assert_array_equal(v.numpy(), theirs[v.path], err_msg=v.path)


def test_bn_modes(sources, cifar_images):
    model = finetune.build_pretrained(config_for(sources["normalization"]), num_classes=3, image_size=(32, 32))
    all_phase = plan_lib.Phase("all", 1, 2, 5)
    bns = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    finetune.set_trainable(model, all_phase, "frozen")
    assert not any(bn.trainable for bn in bns)
    finetune.set_trainable(model, all_phase, "frozen_stats")  # γ/β train, statistics do not move
    assert all(bn.trainable and bn.frozen_statistics for bn in bns)
    before = [bn.moving_mean.numpy().copy() for bn in bns]
    model(cifar_images, training=True)
    assert all(np.array_equal(b, bn.moving_mean.numpy()) for b, bn in zip(before, bns))
    finetune.set_trainable(model, all_phase, "train")
    model(cifar_images, training=True)
    assert all(not np.array_equal(b, bn.moving_mean.numpy()) for b, bn in zip(before, bns))


@pytest.mark.parametrize("source_kwargs, target_kwargs, message", [
    (dict(shortcut="B"), dict(), r"layer 'conv2_block1' differs in shortcut \('projection' there, 'zeropad' here\)"),
    (dict(se_ratio=0.25), dict(), r"layer 'conv2_block1' differs in se_ratio \(0\.25 there, None here\)"),
    (dict(), dict(depth=14), r"layer 'conv2_block2' is not in the pretrained model"),
])
def test_copy_weights_refuses_another_architecture_and_assigns_nothing(source_kwargs, target_kwargs, message):
    """Option-B into option-A, SE into plain, a deeper target: each was a silent partial copy."""
    source = kr.build(8, variant="cifar", **source_kwargs)
    target = kr.build(target_kwargs.pop("depth", 8), variant="cifar", **target_kwargs)
    before = [v.numpy().copy() for v in target.weights]
    with pytest.raises(ValueError, match=message):
        finetune.copy_weights(source, target, origin="src.keras")
    assert all(np.array_equal(b, v.numpy()) for b, v in zip(before, target.weights))


def test_copy_weights_refuses_v1_into_v1_5_where_every_shape_agrees():
    source = kr.build(50, variant="v1", input_shape=(32, 32, 3), include_top=False)
    target = kr.build(50, variant="v1.5", input_shape=(32, 32, 3), include_top=False)
    with pytest.raises(ValueError, match=r"layer 'conv2_block1' differs in stride_on \('1x1' there, '3x3' here\)"):
        finetune.copy_weights(source, target)


def test_the_finished_model_is_the_trained_one_even_without_the_source(sources, tmp_path):
    """The source file is needed to start, not to finish: it is removed once phase 'all' starts."""
    import shutil

    source = tmp_path / "source.keras"
    shutil.copy(sources["preprocessing"], source)
    data = small_cifar_folder(tmp_path / "data", classes=("cat", "dog", "ship"), per_class=16)

    def log(line):
        if line.startswith("Phase 'all'"):
            source.unlink()

    metrics = training.train("finetune", output=tmp_path / "run", weights=str(source), data=str(data),
                             epochs=1, batch_size=16, precision="float32",
                             overrides=["train.head_steps=3", "train.validate_every=0"], log=log, verbose=0)
    assert metrics["status"] == "complete" and not source.exists()
    model = keras.models.load_model(tmp_path / "run" / "model.keras")
    assert model.get_layer("preprocessing") and model.output_shape == (None, 3)
    assert all(v.dtype == "float32" for v in model.weights)


def test_pick_follows_the_data_and_overrides_win():
    small, why = plan_lib.pick(250, 32, 64)
    large, _ = plan_lib.pick(25_000, 32, 64)
    assert small["train"]["lr"] < large["train"]["lr"] <= 0.05
    assert small["train"]["epochs"] * 250 >= 600 * 64 - 250 and large["train"]["epochs"] == 30
    assert plan_lib.pick(5000, 224, 64)[0]["augment"]["random_resized_crop"]
    assert plan_lib.pick(5000, 32, 8)[0]["train"]["bn_mode"] == "frozen_stats"
    assert "250 images of 32 px at batch 64" in why
    assert plan_lib.pick(5000, 32, 256)[0]["train"]["head_lr"] == small["train"]["head_lr"]  # train scales it
    config = recipes.resolve(None, ["train.lr=0.2"], weights="x.keras", data=str(CIFAR_DIR),
                             max_train_samples=1000)
    assert config["recipe"]["name"] == "finetune" and config["train"]["lr"] == 0.2
    picked = plan_lib.pick(1000, 32, 64)[0]
    assert config["train"]["epochs"] == picked["train"]["epochs"]
    assert config["recipe"]["picked"].startswith("finetune picked for 1000 images of 32 px at batch 64")
    assert config["recipe"]["picked"].endswith("overridden: train.lr=0.2")
