"""`keras-resnet` command line: argparse subcommands over the Python API, no logic of its own."""

from __future__ import annotations

import argparse
import os
import sys

from keras_resnet.errors import BACKEND_EXTRAS, missing_backend
from keras_resnet.files import dumps  # strict JSON, as every file the package writes
from keras_resnet.flags import FLAG_FIELDS, FLAGS

TRAIN_HELP = {
    "data": "TFDS name (cifar10, ...), a folder with train/ and test/ class folders, or an .npz",
    "data_dir": "TFDS data_dir",
    "weights": "fine-tune from pretrained weights: a .keras model from `train`, a weight tag or file "
    "(see `keras-resnet weights`); with --recipe finetune, a new head trains first",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keras-resnet", description="The ResNet family for Keras 3.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        _add_summary,
        _add_train,
        _add_runs,
        _add_recipes,
        _add_evaluate,
        _add_predict,
        _add_export,
        _add_weights,
        _add_benchmark,
    ):
        add(sub)
    return parser


def _add_summary(sub) -> None:
    summary = sub.add_parser("summary", help="parameter and MAC counts of a model, or the whole table")
    summary.add_argument("--depth", type=int, help="e.g. 18, 50, 101 (ImageNet) or 20, 56, 110 (CIFAR)")
    summary.add_argument("--variant", help="v1, v1.5 (default), v1d, v2, or cifar")
    summary.add_argument("--groups", type=int, default=1)
    summary.add_argument("--width-per-group", type=int, default=64)
    summary.add_argument("--se-ratio", type=float)
    summary.add_argument("--num-classes", type=int)
    summary.add_argument("--input-size", type=int, help="square input side (default 224, CIFAR 32)")
    summary.add_argument("--all", action="store_true", help="every named model, as a table")
    summary.add_argument("--format", choices=("text", "json", "markdown"), default="text")
    summary.add_argument("--layers", action="store_true", help="also print Keras's layer summary")


def _add_train(sub) -> None:
    train = sub.add_parser("train", help="train with model.fit into a run folder (resumes after a crash)")
    train.add_argument("--recipe", help="a shipped recipe (see `keras-resnet recipes`) or a .toml path")
    train.add_argument("--output", default=None, help="run folder (default: runs/<recipe>)")
    for flag, (section, field, kind) in FLAGS.items():  # each sets one recipe field
        train.add_argument(
            f"--{flag.replace('_', '-')}", type=kind, help=TRAIN_HELP.get(flag, f"sets {section}.{field}")
        )
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override any recipe field, e.g. --set train.label_smoothing=0.1",
    )
    train.add_argument("--overwrite", action="store_true", help="replace a run folder with another configuration")
    train.add_argument(
        "--strategy",
        default="auto",
        help="auto, one-device, mirrored (local GPUs), multi-worker (TF_CONFIG), multi-process (a JAX "
        "cluster: KERAS_DISTRIBUTION_* variables, SLURM, a TPU pod slice) or tpu; --batch-size is the global batch",
    )
    train.add_argument("--tpu", help="TPU address or name for --strategy tpu (default: TPU_NAME / Colab's)")


def _add_runs(sub) -> None:
    runs = sub.add_parser("runs", help="where a training run stands: checkpoints, step, whether it can resume")
    runs.add_argument("action", choices=("show",))
    runs.add_argument("folder", help="the run folder (train's --output)")


def _add_recipes(sub) -> None:
    recipes = sub.add_parser("recipes", help="list the shipped recipes")
    recipes.add_argument("--show", metavar="NAME", help="print one recipe's full resolved configuration")


def _add_evaluate(sub) -> None:
    evaluate = sub.add_parser("evaluate", help="top-1, top-5 and per-class accuracy of a .keras model")
    evaluate.add_argument("model")
    evaluate.add_argument("--data", required=True, help="TFDS name or folder")
    evaluate.add_argument(
        "--split",
        choices=("test", "train"),
        default="test",
        help="test: the test/val split; train: the training images without augmentation (how well the model fits them)",
    )
    evaluate.add_argument("--data-dir")
    evaluate.add_argument("--max-eval-samples", type=int, help="a seeded subset of the split, every class in it")
    evaluate.add_argument("--batch-size", type=int, default=256)
    evaluate.add_argument("--format", choices=("text", "json"), default="text")
    evaluate.add_argument(
        "--flip-tta", action="store_true", help="average each image's prediction with its horizontal mirror's"
    )


def _add_predict(sub) -> None:
    predict = sub.add_parser("predict", help="top-k classes of image files")
    predict.add_argument("model")
    predict.add_argument("images", nargs="+")
    predict.add_argument("--top-k", type=int, default=5)


def _add_export(sub) -> None:
    export = sub.add_parser(
        "export", help="SavedModel for TF Serving, TFLite, .keras, weights or ONNX, verified against the Keras model"
    )
    export.add_argument("model", help="a .keras file, e.g. runs/cifar10-fast/model.keras")
    export.add_argument("--format", required=True, help="saved_model, tflite, keras, weights or onnx")
    export.add_argument(
        "--output",
        required=True,
        help="saved_model: the serving base folder (BASE/NAME/VERSION is written); other formats: the file",
    )
    export.add_argument("--name", help="saved_model: the model's name in BASE (default: the Keras model's name)")
    export.add_argument("--version", type=int, help="saved_model: version number (default: next free)")
    export.add_argument("--quantize", default="none", help="tflite: none, float16, dynamic or int8")
    export.add_argument("--calibration-data", help="int8: folder or TFDS name (its train split)")
    export.add_argument("--calibration-steps", type=int, default=200, help="int8: calibration images")
    export.add_argument("--int8-io", default="float32", help="int8: input/output type float32, int8 or uint8")
    export.add_argument(
        "--verify-data", help="folder or TFDS name for the parity check (default: the run folder's evaluation data)"
    )
    export.add_argument("--verify-samples", type=int, default=500)
    export.add_argument("--data-dir", help="TFDS data_dir")
    export.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing file (atomically); SavedModel versions are never replaced",
    )


def _add_weights(sub) -> None:
    weights = sub.add_parser("weights", help="the published weights build() takes, as a table")
    weights.add_argument("pattern", nargs="?", default="*", help="a model name or a glob, e.g. 'resnet50*'")
    weights.add_argument("--format", choices=("text", "json", "markdown"), default="text")


def _add_benchmark(sub) -> None:
    bench = sub.add_parser("benchmark", help="images/s of the default training or inference step")
    bench.add_argument("--depth", type=int, default=20)
    bench.add_argument("--mode", choices=("train", "predict"), default="train")
    bench.add_argument("--batch-size", type=int, default=128)
    bench.add_argument("--steps", type=int, default=50)
    bench.add_argument("--warmup", type=int, default=5)
    bench.add_argument(
        "--rounds", type=int, default=5, help="timed windows of --steps steps; reports the median, best and spread"
    )
    bench.add_argument("--precision", default="auto")


def _train(args) -> int:
    from keras_resnet import runfolder, training

    output = args.output or runfolder.default_folder(args.recipe)
    metrics = training.train(
        args.recipe,
        output=output,
        overrides=args.set,
        overwrite=args.overwrite,
        strategy=args.strategy,
        tpu=args.tpu,
        **{k: getattr(args, k) for k in FLAG_FIELDS},
    )
    print(dumps(runfolder.summary(output, metrics)))
    return 0


def _runs(args) -> int:
    from pathlib import Path

    from keras_resnet import runfolder

    print(dumps(runfolder.where(Path(args.folder)), indent=2))
    return 0


def _recipes(args) -> int:
    from keras_resnet import recipes

    if args.show:
        print(dumps(recipes.load(args.show), indent=2))
    else:
        print("\n".join(f"{name:20s} {text}" for name, text in recipes.available().items()))
    return 0


def _evaluate(args) -> int:
    from keras_resnet import evaluation

    result = evaluation.evaluate(
        args.model,
        args.data,
        split=args.split,
        data_dir=args.data_dir,
        max_samples=args.max_eval_samples,
        batch_size=args.batch_size,
        flip_tta=args.flip_tta,
    )
    result.pop("confusion_matrix", None)
    print(dumps(result, indent=2) if args.format == "json" else evaluation.format_report(result, args.model))
    return 0


def _predict(args) -> int:
    from keras_resnet import evaluation

    print(evaluation.format_predictions(evaluation.predict_files(args.model, args.images, args.top_k)))
    return 0


def _export(args) -> int:
    from keras_resnet import exporter

    result = exporter.export(
        args.model,
        args.format,
        args.output,
        name=args.name,
        version=args.version,
        quantize=args.quantize,
        calibration_data=args.calibration_data,
        calibration_steps=args.calibration_steps,
        int8_io=args.int8_io,
        verify_data=args.verify_data,
        verify_samples=args.verify_samples,
        data_dir=args.data_dir,
        overwrite=args.overwrite,
        log=lambda line: print(line, file=sys.stderr),
    )
    print(dumps({k: result[k] for k in ("artifact", "ok", "verification_data", "rows")}))
    return 0


def _benchmark(args) -> int:
    from keras_resnet import benchmarking

    print(
        dumps(
            benchmarking.benchmark(
                args.depth,
                mode=args.mode,
                batch_size=args.batch_size,
                steps=args.steps,
                warmup=args.warmup,
                rounds=args.rounds,
                precision=args.precision,
            )
        )
    )
    return 0


def _summary(args) -> int:
    from keras_resnet import summary

    size = args.input_size
    print(
        summary.report(
            args.depth,
            args.format,
            all_models=args.all,
            show_layers=args.layers,
            variant=args.variant,
            groups=args.groups,
            width_per_group=args.width_per_group,
            se_ratio=args.se_ratio,
            num_classes=args.num_classes,
            input_shape=(size, size, 3) if size else None,
        )
    )
    return 0


def _weights(args) -> int:
    from keras_resnet import registry

    print(registry.table(args.pattern, args.format))
    return 0


NEED_TENSORFLOW = ("evaluate", "predict", "export")  # tf.image preprocessing, SavedModel and TFLite
COMMANDS = {
    "summary": _summary,
    "train": _train,
    "runs": _runs,
    "recipes": _recipes,
    "evaluate": _evaluate,
    "predict": _predict,
    "export": _export,
    "benchmark": _benchmark,
    "weights": _weights,
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # hide C++ info and warnings, keep errors
    try:
        if args.command in NEED_TENSORFLOW:
            from keras_resnet import backends

            backends.require_tensorflow(
                f"keras-resnet {args.command}", "run it where TensorFlow is installed; model.keras loads there"
            )
            if backends.name() != "tensorflow":
                raise backends.BackendError(
                    f"keras-resnet {args.command} runs on the TensorFlow backend; this is {backends.name()}. "
                    f"Run KERAS_BACKEND=tensorflow keras-resnet {args.command} ... (a model.keras trained on "
                    "any backend loads there)."
                )
        return COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError, OSError, RuntimeError) as err:
        print(f"keras-resnet {args.command}: error: {err}", file=sys.stderr)
        return 2
    except ImportError as err:  # an optional dependency this command needs is not installed
        name = err.name if isinstance(err, ModuleNotFoundError) else None
        if name in BACKEND_EXTRAS:
            message = missing_backend(name)
        else:
            message = f"{err}{f' (pip install {name})' if name else ''}"
        print(f"keras-resnet {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
