"""`keras-resnet` command line: argparse subcommands over the Python API, no logic of its own."""

from __future__ import annotations

import argparse
import json
import os
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keras-resnet", description="The ResNet family for Keras 3.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    return parser


def _summary(args) -> int:
    from keras_resnet import build, model_stats
    from keras_resnet.summary import MODEL_TABLE

    if args.all:
        rows = [(label, model_stats(build(**kwargs))) for label, kwargs in MODEL_TABLE]
    elif args.depth is None:
        raise ValueError("summary needs --depth D (e.g. --depth 50) or --all.")
    else:
        size = args.input_size
        model = build(args.depth, variant=args.variant, groups=args.groups,
                      width_per_group=args.width_per_group, se_ratio=args.se_ratio,
                      num_classes=args.num_classes,
                      input_shape=(size, size, 3) if size else None)
        if args.layers:
            model.summary()
        rows = [(model.name, model_stats(model))]
    if args.format == "json":
        print(json.dumps([{"model": label, **stats} for label, stats in rows], indent=2))
    elif args.format == "markdown":
        print("| model | input | trainable params | MACs |\n|---|---|---:|---:|")
        for label, s in rows:
            side = "×".join(str(d) for d in s["input_shape"][:2])
            macs = f"{s['macs'] / 1e9:.2f} G" if s["macs"] >= 1e9 else f"{s['macs'] / 1e6:.1f} M"
            print(f"| {label} | {side} | {s['trainable_params']:,} | {macs} |")
    else:
        for label, s in rows:
            print(f"{label}: input {tuple(s['input_shape'])}, {s['trainable_params']:,} trainable "
                  f"parameters ({s['total_params']:,} total), {s['macs'] / 1e9:.3f} GMACs")
    return 0


COMMANDS = {"summary": _summary}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        return COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError, OSError) as err:
        print(f"keras-resnet {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
