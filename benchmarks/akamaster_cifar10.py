"""The published CIFAR-10 ResNets of akamaster/pytorch_resnet_cifar10, loaded through the
package and evaluated on the original CIFAR-10 test split, beside their published top-1.

Each file found in FILES (as its record names it) is loaded by its record name through
`KERAS_RESNET_WEIGHTS_URL=file://FILES` (so its hash is checked as a download's would be),
built with the record's preprocessing inside (`include_preprocessing=True`), saved as
.keras and scored by `keras-resnet evaluate` (no crop, bilinear: the images are 32 px).
Records whose file is not in FILES are listed as not obtained. With `--export-to DIR`, the
deepest model evaluated is also exported as an int8 TFLite file (calibrated on 200 training
images) and a TF Serving SavedModel (with CIFAR-10's class names), each verified on 500
test images by the package's parity check; their reports go into the JSON. Writes one
JSON file.

    python benchmarks/akamaster_cifar10.py --files DIR --data-dir ../shared/datasets/tensorflow_datasets \
        --export-to /tmp/akamaster-export --out benchmarks/akamaster_cifar10_2026-12-06.json
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
import ledger  # benchmarks/ledger.py: this run's record

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]


def evaluate(model_path: Path, data_dir: str) -> dict:
    """`keras-resnet evaluate MODEL --data cifar10` in a subprocess, as a user runs it."""
    result = subprocess.run(
        [sys.executable, "-m", "keras_resnet.cli", "evaluate", str(model_path), "--data", "cifar10",
         "--data-dir", data_dir, "--format", "json"],
        capture_output=True, text=True, cwd=ROOT, check=True,
    )
    return json.loads(result.stdout)


def export(record, model_path: Path, folder: str, data_dir: str) -> dict:
    """int8 TFLite and SavedModel exports of `model_path`, each with its parity report."""
    import keras_resnet

    out = Path(folder)
    common = {"verify_data": "cifar10", "data_dir": data_dir, "log": lambda line: print(line, file=sys.stderr)}
    tflite = keras_resnet.export(model_path, "tflite", out / f"{record.model}-int8.tflite", quantize="int8",
                                 calibration_data="cifar10", overwrite=True, **common)
    serving = keras_resnet.export(model_path, "saved_model", out / "serving", name=record.model,
                                  class_names=list(record.class_names), **common)
    return {"weights": record.name, "tflite_int8": tflite, "saved_model": serving}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", required=True, help="a folder holding the .th files")
    parser.add_argument("--data-dir", required=True, help="TFDS data_dir with cifar10")
    parser.add_argument("--out", required=True)
    parser.add_argument("--export-to", help="a folder for the exported artifacts (default: no export)")
    args = parser.parse_args()
    os.environ["KERAS_RESNET_WEIGHTS_URL"] = Path(args.files).resolve().as_uri()
    import keras_resnet
    from keras_resnet import registry

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["KERAS_HOME"] = tmp  # the Keras cache: fetched from FILES, hash checked
        for name in registry.list_weights("*.akamaster_cifar10"):
            record = registry.WEIGHTS[name]
            row = {"weights": name, "published_top1": record.top1, "file": record.file_name(True)}
            if not (Path(args.files) / row["file"]).is_file():
                rows.append({**row, "evaluated": False, "why": "file not obtained"})
                continue
            model = keras_resnet.build(record.model, weights=name, include_preprocessing=True)
            path = Path(tmp) / f"{record.model}.keras"
            model.save(path)
            scores = evaluate(path, args.data_dir)
            top1 = round(100 * scores["accuracy"], 2)
            rows.append({**row, "evaluated": True, "top1": top1, "top5": round(100 * scores["top5_accuracy"], 2),
                         "loss": round(scores["loss"], 4), "images": scores["num_images"], "data": scores["data"],
                         "difference": round(top1 - record.top1, 2), "preprocessing": scores["preprocessing"]})
            print(json.dumps(rows[-1]), flush=True)
            deepest = (record, path)
        exports = export(*deepest, args.export_to, args.data_dir) if args.export_to else None
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    report = {"what": "akamaster/pytorch_resnet_cifar10's files, loaded by keras_resnet and evaluated on the "
                      "CIFAR-10 test split (TFDS cifar10, 10,000 images)",
              "date": datetime.date.today().isoformat(), "commit": commit.strip(), "cpu": ledger.cpu_model(),
              "command": " ".join(sys.argv), "rows": rows, "exports": exports}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    ledger.record("akamaster_cifar10", report["what"], figures={"exports": exports}, rows=rows)


if __name__ == "__main__":
    main()
