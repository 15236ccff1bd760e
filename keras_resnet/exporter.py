"""`export()`: one entry point from a Keras ResNet to a verified artifact.

Formats: a SavedModel in TF Serving's `BASE/NAME/VERSION/` layout (image-tensor, image-bytes
and tf.Example signatures), a `.tflite` file (float32, float16, dynamic-range or full-integer
int8), a re-saved `.keras`, `.weights.h5`, or ONNX. Every artifact is written to a temporary
path, checked against the Keras model (`keras_resnet.parity`), and only then renamed into
place; a broken artifact is removed and the export fails.

Images reach the signatures that take encoded files through `evaluation.preprocess`, the
same function `evaluate`, `predict` and the parity check use. Quantized TFLite files are
verified on real images only (top-1 agreement needs them).

Placement, for model servers that poll the output while it is written:
- a SavedModel version is written beside `BASE/NAME/` as `.tmp-export-*` (TF Serving only
  loads numeric folder names), fsynced, verified, then renamed to `BASE/NAME/<version>` in
  one `rename(2)`: the version appears whole or not at all. An existing version is never
  replaced, with or without `overwrite`: a server that has loaded a version never reloads
  it, so replacing its files would leave running servers on the old model and new ones on
  the new model under one version number, and a server loading during a swap could read
  half of each. New models are new versions; old ones are retired by removing them after
  the servers serve the new one (export/README.md).
- a file (`.tflite`, `.keras`, `.weights.h5`, `.onnx`) is written beside its target,
  fsynced, and moved with one `os.replace` (`overwrite`), or hard-linked in without
  replacing anything: a reader sees the old file or the new one, never none or half.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

import keras
import numpy as np
import tensorflow as tf

from keras_resnet import converters, evaluation, files, parity, runfolder, saving
from keras_resnet.errors import ExportError, ModelError

FORMATS = ("saved_model", "tflite", "keras", "weights", "onnx")
QUANTIZATIONS = ("none", "float16", "dynamic", "int8")
INT8_IO = ("float32", "int8", "uint8")
TMP_PREFIX = ".tmp-export-"
BYTES_SIGNATURE = "serving_bytes"
EXAMPLE_SIGNATURE = "tf_example"
KIND = {"none": "float32", "float16": "float16", "dynamic": "int8", "int8": "int8"}


# -- the model and what is known about it ----------------------------------------------------


def load_model(path: str | os.PathLike) -> keras.Model:
    """A `.keras` model file, loaded in safe mode (`saving.load_model`)."""
    try:
        return saving.load_model(path)
    except ModelError as err:
        raise ExportError(str(err)) from err.__cause__


class _Layout(evaluation.Layout):
    """`evaluation.Layout` of an exportable model (fixed input size, float32)."""

    def __init__(self, model: keras.Model):
        try:
            super().__init__(model)
        except ModelError as err:
            raise ExportError(str(err)) from None
        if model.dtype_policy.name != "float32":
            raise ExportError(
                f"{model.name} computes in {model.dtype_policy.name}; export a "
                "float32 model (`train` saves model.keras in float32; or rebuild "
                "under keras.config.set_dtype_policy('float32') and copy weights)."
            )


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


@dataclasses.dataclass(frozen=True)
class Options:
    """`export`'s keywords after its format and output, checked (`check`)."""

    format: str
    output: Path
    quantize: str = "none"
    calibration_data: str | None = None
    calibration_steps: int = 200
    int8_io: str = "float32"
    verify_data: str | None = None
    verify_samples: int = 500
    data_dir: str | None = None
    overwrite: bool = False

    def check(self) -> None:
        """Refuse a request that cannot be done, before anything is read or written."""
        if self.format not in FORMATS:
            raise ExportError(f"Unknown format {self.format!r}; choose one of {', '.join(FORMATS)}.")
        if self.quantize not in QUANTIZATIONS:
            raise ExportError(f"Unknown quantization {self.quantize!r}; choose one of {', '.join(QUANTIZATIONS)}.")
        if self.quantize != "none" and self.format != "tflite":
            raise ExportError(f"--quantize applies to --format tflite, not {self.format}.")
        if self.int8_io not in INT8_IO:
            raise ExportError(f"Unknown int8 I/O type {self.int8_io!r}; choose one of {', '.join(INT8_IO)}.")
        if self.quantize == "int8" and not self.calibration_data:
            raise ExportError(
                "Full-integer int8 needs calibration images: pass --calibration-data "
                "<folder or TFDS name> (its training split is used)."
            )
        if self.format == "weights" and not self.output.name.endswith(".weights.h5"):
            raise ExportError(f"Weights files must end in .weights.h5, not {self.output.name}.")
        if self.format != "saved_model" and self.output.exists() and not self.overwrite:
            raise ExportError(
                f"{self.output} already exists; it was left untouched. Choose another --output or pass --overwrite."
            )


def _verification_sample(
    layout: _Layout, options: Options, context: dict, prep: evaluation.Preprocessing, log: Callable[[str], None]
) -> parity.Sample:
    """Real images when there are any (`verify_data`, the run folder's evaluation data, the
    calibration data's evaluation split); a synthetic batch for float32 artifacts only."""
    verify_data, data_dir, count = options.verify_data, options.data_dir, options.verify_samples
    calibration_data, quantize = options.calibration_data, options.quantize
    if verify_data:
        return parity.load_sample(verify_data, prep=prep, count=count, data_dir=data_dir)
    for data, where in (
        (context.get("data"), "the run folder's evaluation data"),
        (calibration_data, "the calibration data's evaluation split"),
    ):
        found = _available(data, context.get("data_dir") or data_dir, context.get("folder"))
        if found:
            log(f"Verifying on {where}: {found}")
            return parity.load_sample(found, prep=prep, count=count, data_dir=context.get("data_dir") or data_dir)
    if quantize != "none":
        # Quantization changes the numbers by design, so max |Δp| has no fixed bound: top-1
        # agreement on real images is what tells a good file from a broken one. On synthetic
        # images, unlike anything the model was trained on, agreement says little, so there
        # is no synthetic fallback (parity.compare checks agreement with or without labels).
        why = (
            f"the run folder's data {context['data']!r} is not readable here"
            if context.get("data")
            else "no run folder with data beside the model"
        )
        raise ExportError(
            f"--quantize {quantize} is verified on real images ({why}): pass "
            "--verify-data FOLDER_OR_TFDS_NAME (verify_data=...)."
        )
    log(
        "No verification data given or recorded: verifying on a fixed synthetic batch "
        "(max |Δp| only; pass --verify-data for agreement and accuracy)."
    )
    return parity.synthetic_sample(layout.size, layout.channels)


# -- atomic placement --------------------------------------------------------------------------


def _temporary_dir(parent: Path) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    files.remove_dead_temporaries(parent, TMP_PREFIX)
    return Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", dir=parent))


def _fsync(path: Path) -> None:
    """Flush a file, or a folder's entries, to disk (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for folder, _, names in os.walk(root):
        for name in names:
            _fsync(Path(folder, name))
        _fsync(Path(folder))


def _place_file(tmp: Path, target: Path, overwrite: bool) -> None:
    """Move a finished, fsynced file to `target` in one step.

    `overwrite`: `os.replace`, atomic on POSIX and Windows; `target` always exists, as the
    old file or the new one. Otherwise a hard link, which fails rather than replace a
    file that appeared while the export ran (filesystems without hard links: a rename
    after a last check)."""
    _fsync(tmp)
    taken = ExportError(f"{target} already exists; it was left untouched. Choose another --output or pass --overwrite.")
    if overwrite:
        os.replace(tmp, target)
    else:
        try:
            os.link(tmp, target)
        except FileExistsError:
            raise taken from None
        except OSError:
            if os.path.lexists(target):
                raise taken from None
            os.replace(tmp, target)
    _fsync(target.parent)


def _place_version(tmp: Path, target: Path) -> None:
    """Rename a finished, fsynced SavedModel folder to the new version `target` in one
    `rename(2)`. A folder is never renamed over a non-empty one, so a version that
    appeared meanwhile (another export) is left as it is, and this one fails."""
    _fsync_tree(tmp)
    try:
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, "exists", str(target))
        os.rename(tmp, target)
    except OSError as err:
        if err.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
            raise
        raise ExportError(
            f"{target} appeared while this export ran (another export?); it "
            "was left untouched. Export again for the next version."
        ) from None
    _fsync(target.parent)


def _next_version(model_dir: Path) -> int:
    versions = [int(p.name) for p in model_dir.glob("*") if p.name.isdigit() and p.is_dir()]
    return max(versions, default=0) + 1


def _version_target(base: Path, name: str, version: int | None) -> Path:
    """`base/name/<version>` (the next free version when None); an existing one is refused."""
    model_dir = base / name
    version = version if version is not None else _next_version(model_dir)
    if version < 0:
        raise ExportError(f"Version must be a non-negative integer, not {version}.")
    target = model_dir / str(version)
    if os.path.lexists(target):
        raise ExportError(
            f"Version {target} already exists and is never replaced, even with "
            "--overwrite (a server that loaded it would keep the old model); it "
            "was left untouched. Publish the next version (omit --version), then "
            "remove the old one once your servers serve the new one."
        )
    return target


# -- SavedModel --------------------------------------------------------------------------------


def _serving_archive(
    model: keras.Model, layout: _Layout, class_names: Sequence[str] | None, prep: evaluation.Preprocessing
):
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
        known = tf.reduce_any([tf.strings.substr(header, 0, 3) == b"\xff\xd8\xff", header == b"\x89PNG"])
        with tf.control_dependencies(
            [tf.debugging.Assert(known, ["image_bytes: an input is not a JPEG or PNG file (first bytes:", header, ")"])]
        ):
            image = tf.io.decode_image(encoded, channels=channels, expand_animations=False)
        return prep(image)

    def decode_batch(encoded):
        return tf.map_fn(decode, encoded, fn_output_signature=tf.TensorSpec([height, width, channels], tf.float32))

    def serve_images(images):
        expected = [height, width, channels]
        check = tf.debugging.assert_equal(
            tf.shape(images)[1:],
            expected,
            message=(
                f"images: expected shape [batch, {height}, {width}, {channels}] (RGB pixels in "
                f"[0, 255]); resize first, or send encoded images to {BYTES_SIGNATURE}, which resizes"
            ),
        )
        with tf.control_dependencies([check]):
            return outputs(tf.identity(images))

    def serve_bytes(image_bytes):
        return outputs(decode_batch(image_bytes))

    def serve_examples(examples):
        parsed = tf.io.parse_example(examples, {"image/encoded": tf.io.FixedLenFeature([], tf.string)})
        return outputs(decode_batch(parsed["image/encoded"]))

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default",
        serve_images,
        input_signature=[tf.TensorSpec([None, height, width, channels], tf.float32, name="images")],
    )
    archive.add_endpoint(
        BYTES_SIGNATURE, serve_bytes, input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")]
    )
    archive.add_endpoint(
        EXAMPLE_SIGNATURE, serve_examples, input_signature=[tf.TensorSpec([None], tf.string, name="examples")]
    )
    return archive


def _export_saved_model(model, layout, target: Path, *, class_names, prep, sample, reference, log) -> dict:
    tmp = _temporary_dir(target.parent)
    try:
        archive = _serving_archive(model, layout, class_names, prep)
        archive.write_out(str(tmp / "saved_model"), verbose=False)
        rows = parity.saved_model_rows(
            tmp / "saved_model", sample, reference, {"bytes": BYTES_SIGNATURE, "example": EXAMPLE_SIGNATURE}
        )
        result = _report(
            rows,
            sample,
            artifact=str(target),
            format="saved_model",
            signatures=["serving_default", BYTES_SIGNATURE, EXAMPLE_SIGNATURE],
        )
        log(parity.table(rows))
        _check_rows(result, "SavedModel")  # before the rename: a broken version never appears
        files.write_json(tmp / "saved_model" / "assets.extra" / "export_report.json", result)
        _place_version(tmp / "saved_model", target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


# -- TFLite ------------------------------------------------------------------------------------


def tflite_model(
    model: keras.Model, quantize: str = "none", calibration_images: np.ndarray | None = None, int8_io: str = "float32"
) -> bytes:
    """The `.tflite` bytes of `model` (no verification; `export` verifies): one input
    `images` (NHWC pixels in [0, 255], batch resizable), one output `probabilities`.
    `calibration_images` (preprocessed, like the input) drive full-integer int8."""
    layout = _Layout(model)
    height, width = layout.size
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default",
        lambda images: {"probabilities": layout.probabilities(model, images)},
        input_signature=[tf.TensorSpec([None, height, width, layout.channels], tf.float32, name="images")],
    )
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
            images = cast(np.ndarray, calibration_images)  # int8 always has them (Options.check)
            converter.representative_dataset = lambda: ([images[i : i + 1]] for i in range(len(images)))
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            io_type = {"float32": tf.float32, "int8": tf.int8, "uint8": tf.uint8}[int8_io]
            converter.inference_input_type = converter.inference_output_type = io_type
        return converter.convert()


# -- the entry point ---------------------------------------------------------------------------


def _report(rows: list[dict], sample: parity.Sample, **fields) -> dict:
    return {**fields, "verification_data": sample.source, "rows": rows, "ok": all(row["ok"] for row in rows)}


def _check_rows(result: dict, artifact: str) -> None:
    if not result["ok"]:
        raise ExportError(
            f"The exported {artifact} does not match the Keras model, so it was "
            f"removed:\n{parity.table(result['rows'])}"
        )


def export(
    model: keras.Model | str | os.PathLike,
    format: str,
    output: str | os.PathLike,
    *,
    name: str | None = None,
    version: int | None = None,
    quantize: str = "none",
    calibration_data: str | None = None,
    calibration_steps: int = 200,
    int8_io: str = "float32",
    verify_data: str | None = None,
    verify_samples: int = 500,
    data_dir: str | None = None,
    class_names: Sequence[str] | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
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
    beside a `.keras` path, else the calibration data's evaluation split, else (float32
    artifacts only) a synthetic batch; a quantized file without real images is refused
    before anything is written. Images are preprocessed by `evaluation.preprocess` with the
    run's eval crop and its weight record's interpolation, as the `serving_bytes` and
    `tf_example` signatures do.

    `overwrite` replaces an existing file in one atomic `os.replace`. A SavedModel version
    is never replaced: an existing `version` is refused (publish the next one).

    Returns the report (also saved beside or inside the artifact); raises `ExportError` if
    the artifact is broken (it is removed) or the request is invalid (nothing is written).
    """
    options = Options(
        format,
        Path(output),
        quantize,
        calibration_data,
        calibration_steps,
        int8_io,
        verify_data,
        verify_samples,
        data_dir,
        overwrite,
    )
    options.check()
    path = None if isinstance(model, keras.Model) else model
    model = model if isinstance(model, keras.Model) else load_model(model)
    layout = _Layout(model)
    context = runfolder.context(path)
    class_names = list(class_names or context.get("class_names") or []) or None
    if class_names and len(class_names) != layout.num_classes:
        raise ExportError(f"{len(class_names)} class names for a model with {layout.num_classes} classes.")
    try:
        prep = evaluation.preprocessing_for(model, context=context)
    except ModelError as err:
        raise ExportError(str(err)) from None
    target = _version_target(options.output, name or model.name, version) if format == "saved_model" else None
    sample = _verification_sample(layout, options, context, prep, log)
    reference = parity.in_batches(_keras_runner(model, layout), sample.images)
    if target is not None:
        result = _export_saved_model(
            model, layout, target, class_names=class_names, prep=prep, sample=sample, reference=reference, log=log
        )
        log(f"Wrote {target}")
        return result
    return _export_file(model, layout, options, prep, (sample, reference), log)


def _export_file(
    model: keras.Model,
    layout: _Layout,
    options: Options,
    prep: evaluation.Preprocessing,
    verification: tuple[parity.Sample, np.ndarray],
    log: Callable[[str], None],
) -> dict:
    """A single-file artifact, written to a temporary folder, checked against the Keras
    model's `verification` outputs, then moved into place with its report."""
    output, quantize, int8_io = options.output, options.quantize, options.int8_io
    sample, reference = verification
    calibration = None
    if quantize == "int8":
        calibration = parity.load_sample(
            cast(str, options.calibration_data),  # int8 always has it (Options.check)
            prep=prep,
            count=options.calibration_steps,
            data_dir=options.data_dir,
            split="train",
        )
    tmp = _temporary_dir(output.parent)
    try:
        artifact = tmp / output.name
        run, row_name, kind = _write_artifact(model, layout, options, calibration, artifact)
        rows = [parity.compare(row_name, kind, reference, parity.in_batches(run, sample.images), sample.labels)]
        result = _report(
            rows,
            sample,
            artifact=str(output),
            format=options.format,
            quantize=quantize,
            int8_io=int8_io if quantize == "int8" else None,
            calibration=calibration.source if calibration else None,
            size_bytes=artifact.stat().st_size,
        )
        log(parity.table(rows))
        _check_rows(result, options.format)
        _place_file(artifact, output, options.overwrite)
        files.write_json(Path(f"{output}.report.json"), result)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"Wrote {output} ({result['size_bytes']:,} bytes) and {output}.report.json")
    return result


def _write_artifact(
    model: keras.Model, layout: _Layout, options: Options, calibration: parity.Sample | None, artifact: Path
) -> tuple[Callable[[np.ndarray], np.ndarray], str, str]:
    """Write `artifact` in `options.format`; returns its runner, its parity row's name and kind."""
    if options.format == "tflite":
        quantize, int8_io = options.quantize, options.int8_io
        artifact.write_bytes(tflite_model(model, quantize, calibration.images if calibration else None, int8_io))
        name = f"tflite:{quantize}" + (f" ({int8_io} I/O)" if quantize == "int8" else "")
        return parity.tflite_runner(artifact), name, KIND[quantize]
    if options.format == "keras":
        model.save(artifact)
        return _keras_runner(load_model(artifact), layout), "keras", "float32"
    if options.format == "weights":
        converters.save_weights(model, artifact)  # with the architecture, checked when it loads
        clone = model.__class__.from_config(model.get_config())
        clone.load_weights(artifact)
        return _keras_runner(clone, layout), "weights", "float32"
    return _onnx(model, layout, artifact), "onnx", "float32"


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
        from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
    except ImportError as err:
        raise ExportError("ONNX export needs the onnx extra: pip install 'keras-resnet-family[onnx]'.") from err
    from keras.src.export.tf2onnx_lib import patch_tf2onnx

    patch_tf2onnx()  # tf2onnx 1.17 with numpy 2
    height, width = layout.size
    function = tf.function(
        lambda images: layout.probabilities(model, images),
        autograph=False,
        input_signature=[tf.TensorSpec([None, height, width, layout.channels], tf.float32, name="images")],
    )
    frozen = convert_variables_to_constants_v2(function.get_concrete_function())
    proto, _ = tf2onnx.convert.from_graph_def(
        frozen.graph.as_graph_def(),
        input_names=[t.name for t in frozen.inputs],
        output_names=[t.name for t in frozen.outputs],
    )
    renames = {proto.graph.input[0].name: "images", proto.graph.output[0].name: "probabilities"}
    for node in proto.graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for value in (*proto.graph.input, *proto.graph.output):
        value.name = renames.get(value.name, value.name)
    artifact.write_bytes(proto.SerializeToString())
    session = onnxruntime.InferenceSession(str(artifact), providers=["CPUExecutionProvider"])
    return lambda images: session.run(["probabilities"], {"images": np.asarray(images, np.float32)})[0]
