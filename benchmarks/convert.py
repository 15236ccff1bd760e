"""Time converting ResNet-50 weights from a local PyTorch file into a Keras model.

Without `--file`, writes a random-initialised torchvision ResNet-50 state dict as
.safetensors and .pth first (PyTorch and torchvision needed; they are imported before
TensorFlow, which they cannot follow in one process here). Each round times, per file:
- read: `converters.read` (safetensors parsed with NumPy; .pth through torch.load);
- load: `converters.load` into a built model (map, check every key and shape, assign);
- build + load: `keras_resnet.build("resnet50", weights=file)`, the whole call.
Prints JSON: best and median seconds of each over `--rounds` alternating rounds.

    python benchmarks/convert.py --rounds 5
"""

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
import ledger  # benchmarks/ledger.py: this run's record

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def write_reference(folder: str) -> list[str]:
    import torch
    import torchvision
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in torchvision.models.resnet50().state_dict().items()}
    paths = [os.path.join(folder, "resnet50.safetensors"), os.path.join(folder, "resnet50.pth")]
    save_file(state, paths[0])
    torch.save(state, paths[1])
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", action="append", help="a ResNet-50 state dict (repeatable); default: write one")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        paths = args.file or write_reference(folder)
        import keras

        import keras_resnet
        from keras_resnet import converters

        times = {path: {"read": [], "load": [], "build + load": []} for path in paths}
        model = keras_resnet.build("resnet50", bn_epsilon=converters.TORCH_BN_EPSILON)
        for _ in range(args.rounds):
            for path in paths:
                start = time.perf_counter()
                checkpoint = converters.read(path)
                times[path]["read"].append(time.perf_counter() - start)
                start = time.perf_counter()
                converters.load(model, checkpoint)
                times[path]["load"].append(time.perf_counter() - start)
                start = time.perf_counter()
                keras_resnet.build("resnet50", weights=path)
                times[path]["build + load"].append(time.perf_counter() - start)
                keras.backend.clear_session()
        result = {
            "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.processor() or platform.machine()}, "
                                                         f"{os.cpu_count()} CPUs",
            "keras": keras.__version__, "backend": keras.config.backend(), "rounds": args.rounds,
            "seconds": {os.path.basename(path): {phase: {"best": round(min(v), 3),
                                                          "median": round(statistics.median(v), 3)}
                                                  for phase, v in phases.items()}
                        for path, phases in times.items()},
        }
        print(json.dumps(result, indent=2))
        ledger.record("convert", "reading and loading torchvision ResNet-50 files", figures=result)


if __name__ == "__main__":
    main()
