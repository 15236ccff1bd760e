"""`export()`: one entry point from a Keras ResNet to a verified artifact.

Formats: a SavedModel in TF Serving's `BASE/NAME/VERSION/` layout (image-tensor, image-bytes
and tf.Example signatures), a `.tflite` file (float32, float16, dynamic-range or full-integer
int8), a re-saved `.keras`, `.weights.h5`, or ONNX. Every artifact is written to a temporary
path, checked against the Keras model (`keras_resnet.parity`), and only then renamed into
place; a broken artifact is removed and the export fails.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from keras_resnet import parity, report

FORMATS = ("saved_model", "tflite", "keras", "weights", "onnx")
QUANTIZATIONS = ("none", "float16", "dynamic", "int8")
INT8_IO = ("float32", "int8", "uint8")
TMP_PREFIX = ".tmp-export-"
BYTES_SIGNATURE = "serving_bytes"
EXAMPLE_SIGNATURE = "tf_example"
KIND = {"none": "float32", "float16": "float16", "dynamic": "int8", "int8": "int8"}


class ExportError(ValueError):
    """An export that cannot be done as asked; the message says what to change."""


# -- the model and what is known about it ----------------------------------------------------

def load_model(path: str | os.PathLike) -> keras.Model:
    """A `.keras` model file, loaded in safe mode (our layers are registered on import)."""
    import keras_resnet  # noqa: F401

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"Model file {path} not found.")
    try:
        return keras.models.load_model(path)
    except Exception as err:
        if "safe_mode" in str(err):
            raise ExportError(f"{path} is not a loadable .keras model in safe mode: it holds a "
                              "Lambda layer (arbitrary Python code). Rebuild the model without it; "
                              "safe mode stays on.") from err
        raise ExportError(f"{path} is not a loadable .keras model ({type(err).__name__}: "
                          f"{' '.join(str(err).split())[:200]}). Pass a model saved with "
                          "model.save('model.keras'), e.g. run/model.keras from `train`.") from err


class _Layout:
    """Input size and channel order of an exportable model."""

    def __init__(self, model: keras.Model):
        if len(model.inputs) != 1 or len(model.outputs) != 1 or len(model.output_shape) != 2:
            raise ExportError(f"{model.name} has {len(model.inputs)} input(s) and outputs "
                              f"{model.output_shape}; export needs one image input and one "
                              "class-score output (build with include_top=True).")
        shape = tuple(model.input_shape[1:])
        self.channels_first = shape[0] in (1, 3) and shape[-1] not in (1, 3)
        height, width, channels = (shape[1], shape[2], shape[0]) if self.channels_first else shape
        if None in (height, width, channels):
            raise ExportError(f"{model.name} has no fixed input size (input shape "
                              f"{model.input_shape}). Rebuild it with one, e.g. "
                              "build(..., input_shape=(224, 224, 3)), copy the weights with "
                              "set_weights, and export that model.")
        if model.dtype_policy.name != "float32":
            raise ExportError(f"{model.name} computes in {model.dtype_policy.name}; export a "
                              "float32 model (`train` saves model.keras in float32; or rebuild "
                              "under keras.config.set_dtype_policy('float32') and copy weights).")
        self.size = (height, width)
        self.channels = channels
        self.num_classes = model.output_shape[-1]
        activation = getattr(model.layers[-1], "activation", None)
        self.softmax_inside = getattr(activation, "__name__", "") == "softmax"

    def probabilities(self, model: keras.Model, images: tf.Tensor) -> tf.Tensor:
        """NHWC pixels in [0, 255] -> float32 probabilities (softmax added for logit models)."""
        x = tf.transpose(images, [0, 3, 1, 2]) if self.channels_first else images
        out = tf.cast(model(x, training=False), tf.float32)
        return out if self.softmax_inside else tf.nn.softmax(out)


def run_context(model_path: str | os.PathLike | None) -> dict:
    """What the run folder beside a `train` model records: data, eval crop, class names."""
    if model_path is None:
        return {}
    folder = Path(model_path).resolve().parent
    config = report.read_json(folder / "config.json") or {}
    metrics = report.read_json(folder / "metrics.json") or {}
    data = config.get("data", {})
    return {"data": data.get("name") or None, "data_dir": data.get("data_dir") or None,
            "crop": data.get("eval_crop_fraction") or None,
            "class_names": metrics.get("class_names"), "folder": folder}


# -- where the verification images come from --------------------------------------------------

def _available(data: str | None, data_dir: str | None, folder: Path | None) -> str | None:
    """`data` if it can be read without a download (a folder, or a prepared TFDS dataset)."""
    if not data:
        return None
    from keras_resnet import data as data_lib

    if data_lib.is_folder(data):
        for candidate in (Path(data), *([folder / data] if folder else [])):
            if candidate.is_dir():
                return str(candidate)
        return None
    import tensorflow_datasets as tfds

    try:
        return data if tfds.builder(data, data_dir=data_dir).is_prepared() else None
    except Exception:
        return None


def _verification_sample(layout: _Layout, *, verify_data: str | None, data_dir: str | None,
                         count: int, context: dict, calibration_data: str | None,
                         log: Callable[[str], None]) -> parity.Sample:
    crop = parity.eval_crop(layout.size, context.get("crop"))
    if verify_data:
        return parity.load_sample(verify_data, size=layout.size, crop=crop, count=count,
                                  data_dir=data_dir)
    for data, where in ((context.get("data"), "the run folder's evaluation data"),
                        (calibration_data, "the calibration data's evaluation split")):
        found = _available(data, context.get("data_dir") or data_dir, context.get("folder"))
        if found:
            log(f"Verifying on {where}: {found}")
            return parity.load_sample(found, size=layout.size, crop=crop, count=count,
                                      data_dir=context.get("data_dir") or data_dir)
    log("No verification data given or recorded: verifying on a fixed synthetic batch "
        "(max |Δp| and agreement only; pass --verify-data for accuracy).")
    return parity.synthetic_sample(layout.size, layout.channels)


# -- atomic placement --------------------------------------------------------------------------

def _temporary_dir(parent: Path) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    report.remove_dead_temporaries(parent, TMP_PREFIX)
    return Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", dir=parent))


def _place(tmp: Path, target: Path, overwrite: bool) -> None:
    """Rename a finished artifact into place; an existing target is swapped out, never merged."""
    if not target.exists():
        os.rename(tmp, target)
        return
    if not overwrite:
        raise ExportError(f"{target} already exists; it was left untouched. Pass --overwrite "
                          "(overwrite=True) to replace it.")
    old = tmp.with_name(tmp.name + "-replaced")
    os.rename(target, old)
    os.rename(tmp, target)
    shutil.rmtree(old) if old.is_dir() else old.unlink()


def _next_version(model_dir: Path) -> int:
    versions = [int(p.name) for p in model_dir.glob("*") if p.name.isdigit() and p.is_dir()]
    return max(versions, default=0) + 1


# -- SavedModel --------------------------------------------------------------------------------

def _serving_archive(model: keras.Model, layout: _Layout, class_names: Sequence[str] | None,
                     crop: float | None):
    """A Keras `ExportArchive` with the tensor, image-bytes and tf.Example signatures."""
    height, width = layout.size
    channels, top_k = layout.channels, min(5, layout.num_classes)
    names = tf.constant(list(class_names)) if class_names else None

    def outputs(images):
        probabilities = layout.probabilities(model, images)
        classes = tf.math.top_k(probabilities, k=top_k).indices
        result = {"probabilities": probabilities, "classes": classes}
        if names is not None:
            result["class_names"] = tf.gather(names, classes)
        return result

    def decode(encoded):
        header = tf.strings.substr(encoded, 0, 4)
        known = tf.reduce_any([tf.strings.substr(header, 0, 3) == b"\xff\xd8\xff",
                               header == b"\x89PNG"])
        with tf.control_dependencies([tf.debugging.Assert(known, [
                "image_bytes: an input is not a JPEG or PNG file (first bytes:", header, ")"])]):
            image = tf.io.decode_image(encoded, channels=channels, expand_animations=False)
        return parity.preprocess(image, layout.size, crop)

    def decode_batch(encoded):
        return tf.map_fn(decode, encoded, fn_output_signature=tf.TensorSpec(
            [height, width, channels], tf.float32))

    def serve_images(images):
        expected = [height, width, channels]
        check = tf.debugging.assert_equal(
            tf.shape(images)[1:], expected, message=(
                f"images: expected shape [batch, {height}, {width}, {channels}] (RGB pixels in "
                f"[0, 255]); resize first, or send encoded images to {BYTES_SIGNATURE}, which resizes"))
        with tf.control_dependencies([check]):
            return outputs(tf.identity(images))

    def serve_bytes(image_bytes):
        return outputs(decode_batch(image_bytes))

    def serve_examples(examples):
        parsed = tf.io.parse_example(examples, {"image/encoded": tf.io.FixedLenFeature([], tf.string)})
        return outputs(decode_batch(parsed["image/encoded"]))

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve_images, input_signature=[
        tf.TensorSpec([None, height, width, channels], tf.float32, name="images")])
    archive.add_endpoint(BYTES_SIGNATURE, serve_bytes, input_signature=[
        tf.TensorSpec([None], tf.string, name="image_bytes")])
    archive.add_endpoint(EXAMPLE_SIGNATURE, serve_examples, input_signature=[
        tf.TensorSpec([None], tf.string, name="examples")])
    return archive


def _export_saved_model(model, layout, base: Path, *, name: str, version: int | None,
                        class_names, crop, sample, reference, overwrite, log) -> tuple[Path, dict]:
    model_dir = base / name
    version = version if version is not None else _next_version(model_dir)
    if version < 0:
        raise ExportError(f"Version must be a non-negative integer, not {version}.")
    target = model_dir / str(version)
    if target.exists() and not overwrite:
        raise ExportError(f"Version {target} already exists; it was left untouched. Omit "
                          "--version for the next one, or pass --overwrite to replace it.")
    tmp = _temporary_dir(model_dir)
    try:
        archive = _serving_archive(model, layout, class_names, crop)
        archive.write_out(str(tmp / "saved_model"), verbose=False)
        rows = parity.saved_model_rows(tmp / "saved_model", sample, reference,
                                       {"bytes": BYTES_SIGNATURE, "example": EXAMPLE_SIGNATURE})
        result = _report(rows, sample, artifact=str(target), format="saved_model",
                         signatures=["serving_default", BYTES_SIGNATURE, EXAMPLE_SIGNATURE])
        log(parity.table(rows))
        _check_rows(result, "SavedModel")  # before the rename: a broken version never appears
        report.write_json(tmp / "saved_model" / "assets.extra" / "export_report.json", result)
        _place(tmp / "saved_model", target, overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target, result


# -- TFLite ------------------------------------------------------------------------------------

def tflite_model(model: keras.Model, quantize: str = "none", calibration_images: np.ndarray | None = None,
                 int8_io: str = "float32") -> bytes:
    """The `.tflite` bytes of `model` (no verification; `export` verifies): one input
    `images` (NHWC pixels in [0, 255], batch resizable), one output `probabilities`.
    `calibration_images` (preprocessed, like the input) drive full-integer int8."""
    layout = _Layout(model)
    height, width = layout.size
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default",
                         lambda images: {"probabilities": layout.probabilities(model, images)},
                         input_signature=[tf.TensorSpec([None, height, width, layout.channels],
                                                        tf.float32, name="images")])
    with tempfile.TemporaryDirectory() as workdir:
        # Converting a concrete function that captures Keras 3 variables directly gives NaN
        # outputs (TF 2.21); going through a one-signature SavedModel does not.
        archive.write_out(workdir, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(workdir, signature_keys=["serving_default"])
        if quantize != "none":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "float16":
            converter.target_spec.supported_types = [tf.float16]
        if quantize == "int8":
            images = calibration_images
            converter.representative_dataset = lambda: ([images[i:i + 1]] for i in range(len(images)))
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            io_type = {"float32": tf.float32, "int8": tf.int8, "uint8": tf.uint8}[int8_io]
            converter.inference_input_type = converter.inference_output_type = io_type
        return converter.convert()


# -- the entry point ---------------------------------------------------------------------------

def _report(rows: list[dict], sample: parity.Sample, **fields) -> dict:
    return {**fields, "verification_data": sample.source, "rows": rows,
            "ok": all(row["ok"] for row in rows)}


def _check_rows(result: dict, artifact: str) -> None:
    if not result["ok"]:
        raise ExportError(f"The exported {artifact} does not match the Keras model, so it was "
                          f"removed:\n{parity.table(result['rows'])}")


def export(model: keras.Model | str | os.PathLike, format: str, output: str | os.PathLike, *,
           name: str | None = None, version: int | None = None, quantize: str = "none",
           calibration_data: str | None = None, calibration_steps: int = 200,
           int8_io: str = "float32", verify_data: str | None = None, verify_samples: int = 500,
           data_dir: str | None = None, class_names: Sequence[str] | None = None,
           overwrite: bool = False, log: Callable[[str], None] = print) -> dict:
    """Export `model` (a Keras model or a `.keras` path) and verify it against Keras.

    - `format="saved_model"`: TF Serving layout `output/name/version/` (next version when
      `version` is None); signatures `serving_default` (`images`: float32 NHWC pixels in
      [0, 255]), `serving_bytes` (`image_bytes`: encoded JPEG/PNG) and `tf_example`
      (`examples`: serialized tf.Example with `image/encoded`); outputs `probabilities`,
      `classes` (top-k indices) and, when known, `class_names`.
    - `format="tflite"`: one input, one output (`probabilities`); `quantize` one of
      none/float16/dynamic/int8 (int8 calibrates on `calibration_steps` training images of
      `calibration_data`, I/O type `int8_io`).
    - `format="keras" | "weights" | "onnx"`: a `.keras`, `.weights.h5` or `.onnx` file.

    Verification images: `verify_data`, else the evaluation data recorded in the run folder
    beside a `.keras` path, else the calibration data, else a synthetic batch. Returns the
    report (also saved beside or inside the artifact); raises `ExportError` if the artifact
    is broken (it is removed) or the request is invalid (nothing is written).
    """
    if format not in FORMATS:
        raise ExportError(f"Unknown format {format!r}; choose one of {', '.join(FORMATS)}.")
    if quantize not in QUANTIZATIONS:
        raise ExportError(f"Unknown quantization {quantize!r}; choose one of {', '.join(QUANTIZATIONS)}.")
    if quantize != "none" and format != "tflite":
        raise ExportError(f"--quantize applies to --format tflite, not {format}.")
    if int8_io not in INT8_IO:
        raise ExportError(f"Unknown int8 I/O type {int8_io!r}; choose one of {', '.join(INT8_IO)}.")
    if quantize == "int8" and not calibration_data:
        raise ExportError("Full-integer int8 needs calibration images: pass --calibration-data "
                          "<folder or TFDS name> (its training split is used).")
    output = Path(output)
    if format == "weights" and not output.name.endswith(".weights.h5"):
        raise ExportError(f"Weights files must end in .weights.h5, not {output.name}.")
    if format != "saved_model" and output.exists() and not overwrite:
        raise ExportError(f"{output} already exists; it was left untouched. Choose another "
                          "--output or pass --overwrite.")
    path = None if isinstance(model, keras.Model) else model
    model = model if path is None else load_model(path)
    layout = _Layout(model)
    context = run_context(path)
    class_names = list(class_names or context.get("class_names") or []) or None
    if class_names and len(class_names) != layout.num_classes:
        raise ExportError(f"{len(class_names)} class names for a model with "
                          f"{layout.num_classes} classes.")
    crop = parity.eval_crop(layout.size, context.get("crop"))
    sample = _verification_sample(layout, verify_data=verify_data, data_dir=data_dir,
                                  count=verify_samples, context=context,
                                  calibration_data=calibration_data, log=log)
    reference = parity.in_batches(_keras_runner(model, layout), sample.images)

    if format == "saved_model":
        target, result = _export_saved_model(
            model, layout, output, name=name or model.name, version=version,
            class_names=class_names, crop=crop, sample=sample, reference=reference,
            overwrite=overwrite, log=log)
        log(f"Wrote {target}")
        return result

    calibration = None
    if quantize == "int8":
        calibration = parity.load_sample(calibration_data, size=layout.size, crop=crop,
                                         count=calibration_steps, data_dir=data_dir, split="train")
    tmp = _temporary_dir(output.parent)
    try:
        artifact = tmp / output.name
        row_name, kind = format, "float32"
        if format == "tflite":
            images = calibration.images if calibration else None
            artifact.write_bytes(tflite_model(model, quantize, images, int8_io))
            run = parity.tflite_runner(artifact)
            kind = KIND[quantize]
            row_name = f"tflite:{quantize}" + (f" ({int8_io} I/O)" if quantize == "int8" else "")
        elif format == "keras":
            model.save(artifact)
            run = _keras_runner(load_model(artifact), layout)
        elif format == "weights":
            model.save_weights(artifact)
            clone = model.__class__.from_config(model.get_config())
            clone.load_weights(artifact)
            run = _keras_runner(clone, layout)
        else:
            run = _onnx(model, layout, artifact)
        rows = [parity.compare(row_name, kind, reference, parity.in_batches(run, sample.images),
                               sample.labels)]
        result = _report(rows, sample, artifact=str(output), format=format, quantize=quantize,
                         int8_io=int8_io if quantize == "int8" else None,
                         calibration=calibration.source if calibration else None,
                         size_bytes=artifact.stat().st_size)
        log(parity.table(rows))
        _check_rows(result, format)
        report.write_json(Path(f"{output}.report.json"), result)
        _place(artifact, output, overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"Wrote {output} ({result['size_bytes']:,} bytes) and {output}.report.json")
    return result


def _keras_runner(model: keras.Model, layout: _Layout) -> Callable[[np.ndarray], np.ndarray]:
    return lambda x: layout.probabilities(model, tf.constant(x)).numpy()


def _onnx(model: keras.Model, layout: _Layout, artifact: Path) -> Callable[[np.ndarray], np.ndarray]:
    """ONNX through tf2onnx from the frozen serving function (the `onnx` extra), run back
    with onnxruntime. Input `images` (NHWC pixels in [0, 255]), output `probabilities`.

    Keras's own `model.export(format="onnx")` leaves the Normalization layer's constant
    statistics as extra graph inputs (Keras 3.15, tf2onnx 1.17); freezing first avoids that.
    """
    try:
        import onnxruntime
        import tf2onnx
        from tensorflow.python.framework.convert_to_constants import (
            convert_variables_to_constants_v2)
    except ImportError as err:
        raise ExportError("ONNX export needs the onnx extra: pip install "
                          "'keras-resnet-family[onnx]'.") from err
    from keras.src.export.tf2onnx_lib import patch_tf2onnx

    patch_tf2onnx()  # tf2onnx 1.17 with numpy 2
    height, width = layout.size
    function = tf.function(lambda images: layout.probabilities(model, images), autograph=False,
                           input_signature=[tf.TensorSpec([None, height, width, layout.channels],
                                                          tf.float32, name="images")])
    frozen = convert_variables_to_constants_v2(function.get_concrete_function())
    proto, _ = tf2onnx.convert.from_graph_def(
        frozen.graph.as_graph_def(), input_names=[t.name for t in frozen.inputs],
        output_names=[t.name for t in frozen.outputs])
    renames = {proto.graph.input[0].name: "images", proto.graph.output[0].name: "probabilities"}
    for node in proto.graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for value in (*proto.graph.input, *proto.graph.output):
        value.name = renames.get(value.name, value.name)
    artifact.write_bytes(proto.SerializeToString())
    session = onnxruntime.InferenceSession(str(artifact), providers=["CPUExecutionProvider"])
    return lambda images: session.run(["probabilities"], {"images": np.asarray(images, np.float32)})[0]
