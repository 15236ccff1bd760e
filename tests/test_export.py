"""Export round trips on a really trained ResNet-8 and real CIFAR-10 images: the TF Serving
contract (gRPC protos, REST JSON, saved_model_cli), TFLite through LiteRT, the other formats,
parity reports, atomic versions, and the bad inputs."""

import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from serving_contract import grpc_predict, rest_predict
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.config import model_server_config_pb2

import keras_resnet
from conftest import CIFAR_DIR, ROOT, cli, last_line, run_python
from keras_resnet import exporter, parity

CLASSES = sorted(p.name for p in (CIFAR_DIR / "test").iterdir())
JPEGS = [sorted((CIFAR_DIR / "test" / c).glob("*.jpg"))[5] for c in CLASSES]


def tree_digest(folder):
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def decoded(paths):
    return np.stack([tf.io.decode_jpeg(p.read_bytes(), channels=3).numpy() for p in paths]).astype("float32")


@pytest.fixture(scope="module")
def model_path(trained_run):
    return trained_run[0] / "model.keras"


@pytest.fixture(scope="module")
def keras_model(model_path):
    return keras.models.load_model(model_path)


@pytest.fixture(scope="module")
def serving(model_path, tmp_path_factory):
    base = tmp_path_factory.mktemp("serving")
    result = cli("export", str(model_path), "--format", "saved_model", "--output", str(base),
                 "--name", "resnet8", "--verify-samples", "200")
    assert result.returncode == 0, result.stderr[-3000:]
    return base, json.loads(result.stdout.strip().splitlines()[-1]), tf.saved_model.load(str(base / "resnet8" / "1"))


def test_saved_model_layout_report_and_next_version(serving, model_path):
    base, summary, _ = serving
    version = base / "resnet8" / "1"
    assert (version / "saved_model.pb").is_file() and (version / "variables").is_dir()
    report = json.loads((version / "assets.extra" / "export_report.json").read_text())
    assert report["ok"] and summary["ok"] and "folder:" in report["verification_data"]  # run folder's data
    assert {r["artifact"] for r in report["rows"]} >= {"saved_model:serving_default", "saved_model:tf_example"}
    for row in report["rows"]:
        assert row["images"] == 200 and row["max_abs_diff"] <= 1e-4 and row["top1_agreement"] == 1.0
        assert row["accuracy"] == row["keras_accuracy"] > 0.2
    again = exporter.export(model_path, "saved_model", base, name="resnet8", verify_samples=20, log=lambda _: None)
    assert again["artifact"] == str(base / "resnet8" / "2")
    assert not [p for p in (base / "resnet8").iterdir() if p.name not in ("1", "2")]  # no temporaries left


def test_signatures_have_readable_names_and_outputs(serving):
    _, _, loaded = serving
    assert set(loaded.signatures) == {"serving_default", "serving_bytes", "tf_example"}
    default = loaded.signatures["serving_default"]
    assert list(default.structured_input_signature[1]) == ["images"]
    spec = default.structured_input_signature[1]["images"]
    assert spec.shape.as_list() == [None, 32, 32, 3] and spec.dtype == tf.float32
    assert list(loaded.signatures["serving_bytes"].structured_input_signature[1]) == ["image_bytes"]
    outputs = default.structured_outputs
    assert set(outputs) == {"probabilities", "classes", "class_names"}
    assert outputs["probabilities"].dtype == tf.float32 and outputs["classes"].shape.as_list() == [None, 5]


def test_saved_model_cli_describes_the_export(serving):
    base, _, _ = serving
    result = subprocess.run([os.path.join(os.path.dirname(sys.executable), "saved_model_cli"), "show",
                             "--dir", str(base / "resnet8" / "1"), "--all"],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    for text in ("signature_def['serving_default']", "signature_def['serving_bytes']",
                 "signature_def['tf_example']", "inputs['images'] tensor_info", "shape: (-1, 32, 32, 3)",
                 "inputs['image_bytes'] tensor_info", "outputs['probabilities'] tensor_info",
                 "outputs['class_names'] tensor_info", "dtype: DT_STRING"):
        assert text in out, text


def test_grpc_predict_requests_for_tensor_and_bytes_signatures(serving, keras_model):
    _, _, loaded = serving
    images = decoded(JPEGS)
    expected = keras_model.predict(images, verbose=0)

    tensor_request = predict_pb2.PredictRequest()
    tensor_request.model_spec.name = "resnet8"
    tensor_request.inputs["images"].CopyFrom(tf.make_tensor_proto(images))
    response = grpc_predict(loaded, tensor_request)
    probabilities = tf.make_ndarray(response.outputs["probabilities"])
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    np.testing.assert_array_equal(tf.make_ndarray(response.outputs["classes"])[:, 0], expected.argmax(1))

    bytes_request = predict_pb2.PredictRequest()
    bytes_request.model_spec.name, bytes_request.model_spec.signature_name = "resnet8", "serving_bytes"
    bytes_request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([p.read_bytes() for p in JPEGS]))
    response = grpc_predict(loaded, bytes_request)
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["probabilities"]), expected, atol=1e-5)
    names = tf.make_ndarray(response.outputs["class_names"])
    assert [n[0].decode() for n in names] == [CLASSES[i] for i in expected.argmax(1)]


def test_rest_row_and_columnar_b64_requests(serving, keras_model):
    _, _, loaded = serving
    expected = keras_model.predict(decoded(JPEGS[:3]), verbose=0)
    b64 = [{"b64": base64.b64encode(p.read_bytes()).decode()} for p in JPEGS[:3]]
    rows = rest_predict(loaded, {"signature_name": "serving_bytes",
                                 "instances": [{"image_bytes": v} for v in b64]})
    unnamed = rest_predict(loaded, {"signature_name": "serving_bytes", "instances": b64})
    columnar = rest_predict(loaded, {"signature_name": "serving_bytes", "inputs": {"image_bytes": b64}})
    assert len(rows["predictions"]) == 3 and rows == unnamed
    np.testing.assert_allclose([p["probabilities"] for p in rows["predictions"]], expected, atol=1e-5)
    np.testing.assert_allclose(columnar["outputs"]["probabilities"], expected, atol=1e-5)
    assert rows["predictions"][0]["class_names"][0] == CLASSES[expected[0].argmax()]
    tensor = rest_predict(loaded, {"instances": decoded(JPEGS[:3]).tolist()})
    np.testing.assert_allclose([p["probabilities"] for p in tensor["predictions"]], expected, atol=1e-5)


def test_shipped_sample_request_and_models_config(serving):
    _, _, loaded = serving
    body = json.loads((ROOT / "export" / "request.json").read_text())
    answer = rest_predict(loaded, body)
    assert len(answer["predictions"]) == 2
    assert all(p["class_names"][0] in CLASSES and abs(sum(p["probabilities"]) - 1) < 1e-4
               for p in answer["predictions"])
    config = text_format.Parse((ROOT / "export" / "models.config").read_text(),
                               model_server_config_pb2.ModelServerConfig())
    (entry,) = config.model_config_list.config
    assert entry.model_platform == "tensorflow" and entry.base_path.endswith("/" + entry.name)


def test_corrupt_image_bytes_fail_the_request_only(serving):
    _, _, loaded = serving
    fn = loaded.signatures["serving_bytes"]
    good = JPEGS[0].read_bytes()
    with pytest.raises(tf.errors.InvalidArgumentError, match="not a JPEG or PNG"):
        fn(image_bytes=tf.constant([good, b"GIF89a this is not an image"]))
    with pytest.raises(tf.errors.InvalidArgumentError):
        fn(image_bytes=tf.constant([good[: len(good) // 3]]))  # truncated JPEG
    assert fn(image_bytes=tf.constant([good]))["probabilities"].shape == (1, 10)  # still serving


def test_tensor_signature_rejects_wrong_size_and_dtype(serving):
    _, _, loaded = serving
    fn = loaded.signatures["serving_default"]
    with pytest.raises((ValueError, TypeError, tf.errors.InvalidArgumentError), match=r"expected shape \[batch, 32, 32, 3\]"):
        fn(images=tf.zeros([1, 64, 64, 3]))
    # uint8 pixels: the request carries a DT_UINT8 tensor, which the server hands to the
    # SavedModel unconverted; the exported signature itself refuses it (float32 only).
    request = predict_pb2.PredictRequest()
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(decoded(JPEGS[:1]).astype(np.uint8)))
    assert request.inputs["images"].dtype == tf.uint8.as_datatype_enum
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"expected to be a float tensor but is a uint8"):
        grpc_predict(loaded, request)
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(decoded(JPEGS[:1])))  # the same pixels, float32
    assert tf.make_ndarray(grpc_predict(loaded, request).outputs["probabilities"]).shape == (1, 10)


class Watcher:
    """Polls a path from a thread while an export runs: every look must find it whole."""

    def __init__(self, path, read):
        self.path, self.read, self.seen, self.missing = path, read, set(), 0
        self.looks, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self):
        while not self._stop.is_set():
            try:
                self.seen.add(self.read(self.path))
            except FileNotFoundError:
                self.missing += 1
            self.looks += 1
            time.sleep(0.001)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


RENAMES = []  # (event, args) of renames and removals while a test records them
RECORDING = threading.Event()


def _audit(event, args):
    if RECORDING.is_set() and event in ("os.rename", "os.remove", "os.rmdir", "shutil.rmtree"):
        RENAMES.append((event, tuple(os.path.abspath(os.fspath(a)) if isinstance(a, (str, os.PathLike))
                                     else a for a in args)))


sys.addaudithook(_audit)


def test_existing_version_is_never_replaced_and_the_next_one_is_published(serving, model_path):
    """A server polling BASE/NAME never sees version 1 missing or changed: overwriting it is
    refused (with or without --overwrite) and a new model becomes the next version."""
    base, _, _ = serving
    version = base / "resnet8" / "1"
    before = tree_digest(version)
    result = cli("export", str(model_path), "--format", "saved_model", "--output", str(base),
                 "--name", "resnet8", "--version", "1", "--verify-samples", "10", "--overwrite")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert last_line(result).startswith("keras-resnet export: error: Version ")
    assert "never replaced" in last_line(result) and "Publish the next version" in last_line(result)
    assert tree_digest(version) == before
    with Watcher(version, tree_digest) as watcher:
        with pytest.raises(exporter.ExportError, match="never replaced, even with --overwrite"):
            exporter.export(model_path, "saved_model", base, name="resnet8", version=1,
                            overwrite=True, verify_samples=10, log=lambda _: None)
        published = exporter.export(model_path, "saved_model", base, name="resnet8",
                                    overwrite=True, verify_samples=10, log=lambda _: None)
    assert watcher.missing == 0 and watcher.seen == {before} and watcher.looks > 10
    new = base / "resnet8" / published["artifact"].rsplit("/", 1)[-1]
    assert int(new.name) == max(int(p.name) for p in (base / "resnet8").iterdir())
    assert new.name != "1" and (new / "saved_model.pb").is_file()
    assert not [p for p in (base / "resnet8").iterdir() if not p.name.isdigit()]  # no temporaries


def test_file_overwrite_is_one_atomic_replace(model_path, tmp_path):
    """--overwrite of a .tflite file: the path always holds the old file or the new one,
    whole, and is never renamed away or removed (one os.replace of a fsynced temporary)."""
    out = tmp_path / "m.tflite"
    exporter.export(model_path, "tflite", out, verify_samples=20, log=lambda _: None)
    old = out.read_bytes()
    RENAMES.clear()
    RECORDING.set()
    try:
        with Watcher(out, lambda p: hashlib.sha256(p.read_bytes()).hexdigest()) as watcher:
            exporter.export(model_path, "tflite", out, quantize="float16", overwrite=True,
                            verify_samples=20, log=lambda _: None)
    finally:
        RECORDING.clear()
    new = out.read_bytes()
    assert new != old and len(new) < len(old) * 0.7  # float16 weights
    assert watcher.missing == 0 and watcher.looks > 10
    assert watcher.seen <= {hashlib.sha256(old).hexdigest(), hashlib.sha256(new).hexdigest()}
    target = os.path.abspath(out)
    touching = [(e, a) for e, a in RENAMES if target in a[:2]]
    assert touching and all(e == "os.rename" and a[1] == target for e, a in touching), touching
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tflite", "m.tflite.report.json"]
    assert json.loads((tmp_path / "m.tflite.report.json").read_text())["quantize"] == "float16"


def test_killed_export_leaves_no_version_and_is_cleaned_up(model_path, tmp_path):
    base = tmp_path / "serving"
    proc = subprocess.Popen([sys.executable, "-m", "keras_resnet.cli", "export", str(model_path),
                             "--format", "saved_model", "--output", str(base), "--name", "m",
                             "--verify-samples", "500"],
                            cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not list((base / "m").glob(".tmp-export-*/saved_model/*.pb")):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list((base / "m").glob(".tmp-export-*")), "the export never started writing"
    assert not [p for p in (base / "m").iterdir() if p.name.isdigit()]
    exporter.export(model_path, "saved_model", base, name="m", verify_samples=10, log=lambda _: None)
    assert sorted(p.name for p in (base / "m").iterdir()) == ["1"]  # stale temporary removed


@pytest.mark.parametrize("quantize,io,max_diff,min_agree", [
    ("none", "float32", 1e-4, 1.0), ("float16", "float32", 1e-2, 0.99),
    ("dynamic", "float32", None, 0.9), ("int8", "float32", None, 0.9), ("int8", "uint8", None, 0.9)])
def test_tflite_quantizations(model_path, keras_model, tmp_path, quantize, io, max_diff, min_agree):
    out = tmp_path / f"m-{quantize}-{io}.tflite"
    result = exporter.export(model_path, "tflite", out, quantize=quantize, int8_io=io,
                             calibration_data=str(CIFAR_DIR), calibration_steps=64,
                             verify_samples=200, log=lambda _: None)
    (row,) = result["rows"]
    assert row["ok"] and row["images"] == 200 and (max_diff is None or row["max_abs_diff"] <= max_diff)
    assert json.loads(out.with_name(out.name + ".report.json").read_text())["rows"] == [row]
    interpreter = parity.tflite_interpreter(out)
    assert type(interpreter).__module__.startswith("ai_edge_litert")
    (inp,), (output,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert list(inp["shape_signature"]) == [-1, 32, 32, 3]
    assert inp["dtype"] == output["dtype"] == {"float32": np.float32, "uint8": np.uint8}[io]
    # independent check on images the export did not verify on
    images = decoded([sorted((CIFAR_DIR / "test" / c).glob("*.jpg"))[-1] for c in CLASSES])
    ours = parity.tflite_runner(out)(images)
    expected = keras_model.predict(images, verbose=0)
    assert (ours.argmax(1) == expected.argmax(1)).mean() >= min_agree - 0.1
    if max_diff is not None:
        assert np.abs(ours - expected).max() <= max_diff


def test_tflite_falls_back_to_tf_lite_without_litert(tmp_path, model_path):
    out = tmp_path / "m.tflite"
    exporter.export(model_path, "tflite", out, verify_samples=20, log=lambda _: None)
    result = run_python(f"""
import sys; sys.modules['ai_edge_litert'] = None
import numpy as np
from keras_resnet import parity
interpreter = parity.tflite_interpreter({str(out)!r})
print(type(interpreter).__module__, parity.tflite_runner({str(out)!r})(np.zeros([2, 32, 32, 3])).shape)
""")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[0].startswith("tensorflow") and "(2, 10)" in result.stdout


@pytest.mark.parametrize("fmt,name", [("keras", "copy.keras"), ("weights", "copy.weights.h5"),
                                      ("onnx", "model.onnx")])
def test_other_formats_round_trip(model_path, tmp_path, fmt, name):
    result = exporter.export(model_path, fmt, tmp_path / name, verify_samples=100, log=lambda _: None)
    (row,) = result["rows"]
    assert row["ok"] and row["max_abs_diff"] <= 1e-4 and row["top1_agreement"] == 1.0
    assert (tmp_path / name).is_file() and (tmp_path / f"{name}.report.json").is_file()


def test_in_memory_model_without_data_verifies_on_synthetic_images(tmp_path):
    model = keras_resnet.build(8, variant="cifar", num_classes=4, input_shape=(32, 32, 3),
                               classifier_activation=None)  # logits: softmax is added on export
    result = exporter.export(model, "tflite", tmp_path / "m.tflite", log=lambda _: None)
    (row,) = result["rows"]
    assert result["verification_data"].startswith("synthetic") and "accuracy" not in row
    probs = parity.tflite_runner(tmp_path / "m.tflite")(np.full([1, 32, 32, 3], 128.0))
    np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-5)


def test_broken_artifact_fails_and_is_removed(tmp_path, model_path):
    """int8 calibrated on blank images: real images saturate, the artifact is useless."""
    blank = blank_folder(tmp_path / "blank")
    out = tmp_path / "out" / "m8.tflite"
    with pytest.raises(exporter.ExportError, match="does not match the Keras model"):
        exporter.export(model_path, "tflite", out, quantize="int8", calibration_data=str(blank),
                        verify_data=str(CIFAR_DIR), verify_samples=200, log=lambda _: None)
    assert list(out.parent.iterdir()) == []


def blank_folder(root):
    """train/ and test/ of two classes of constant images (values 0..3): useless for calibration."""
    for split in ("train", "test"):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            for i in range(4):
                (root / split / name / f"{i}.png").write_bytes(
                    tf.io.encode_png(tf.fill([32, 32, 3], tf.constant(i, tf.uint8))).numpy())
    return root


def test_agreement_is_checked_without_labels(keras_model, tmp_path):
    """A genuinely broken int8 file (calibrated on blank images) on real, unlabeled images:
    its top-1 agreement with Keras is low, and the row fails although it has no labels."""
    images = decoded([p for c in CLASSES for p in sorted((CIFAR_DIR / "test" / c).glob("*.jpg"))[10:20]])
    blank = np.stack([np.full([32, 32, 3], float(i % 4), np.float32) for i in range(16)])
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(exporter.tflite_model(keras_model, "int8", blank))
    good = tmp_path / "good.tflite"
    good.write_bytes(exporter.tflite_model(keras_model, "int8", images[::4]))
    reference = keras_model.predict(images, verbose=0)
    bad_row = parity.compare("tflite:int8", "int8", reference, parity.tflite_runner(broken)(images), None)
    assert bad_row["top1_agreement"] < 0.8 and bad_row["ok"] is False
    good_row = parity.compare("tflite:int8", "int8", reference, parity.tflite_runner(good)(images), None)
    assert good_row["top1_agreement"] >= 0.8 and good_row["ok"] is True


def test_quantized_export_without_real_images_fails_before_writing(model_path, tmp_path):
    """float16/dynamic need real images for their agreement check: with none (no run folder,
    no --verify-data), the export stops before writing anything and says what to pass."""
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(model_path, bare / "model.keras")  # no config.json: no recorded data
    out = tmp_path / "out"
    result = cli("export", str(bare / "model.keras"), "--format", "tflite", "--quantize", "dynamic",
                 "--output", str(out / "m.tflite"), timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    line = last_line(result)
    assert line.startswith("keras-resnet export: error: --quantize dynamic is verified on real images")
    assert line.endswith("pass --verify-data FOLDER_OR_TFDS_NAME (verify_data=...).")
    model = keras.models.load_model(model_path)
    with pytest.raises(exporter.ExportError, match=r"--quantize float16 .*no run folder.*"
                                                   r"--verify-data FOLDER_OR_TFDS_NAME"):
        exporter.export(model, "tflite", out / "m16.tflite", quantize="float16", log=lambda _: None)
    moved = tmp_path / "moved"  # a run folder whose recorded data is not here
    moved.mkdir()
    shutil.copy(model_path, moved / "model.keras")
    config = json.loads((model_path.parent / "config.json").read_text())
    config["data"]["name"] = str(tmp_path / "gone" / "cifar10-jpeg")
    (moved / "config.json").write_text(json.dumps(config))
    with pytest.raises(exporter.ExportError, match=r"data '.*gone.*' is not readable here.*--verify-data"):
        exporter.export(moved / "model.keras", "tflite", out / "m8.tflite", quantize="dynamic",
                        log=lambda _: None)
    assert not out.exists() and sorted(p.name for p in moved.iterdir()) == ["config.json", "model.keras"]
    # the float32 file may still use the synthetic batch
    result = exporter.export(model, "tflite", out / "m32.tflite", verify_samples=10, log=lambda _: None)
    assert result["verification_data"].startswith("synthetic") and result["ok"]


def test_bad_requests(tmp_path, model_path):
    flexible = keras_resnet.build(8, variant="cifar", num_classes=4, input_shape=(None, None, 3))
    with pytest.raises(exporter.ExportError, match=r"no fixed input size.*input_shape="):
        exporter.export(flexible, "tflite", tmp_path / "m.tflite")
    existing = tmp_path / "taken.tflite"
    existing.write_bytes(b"keep me")
    cases = [
        (["--format", "pdf", "--output", str(tmp_path / "m.pdf")], "Unknown format 'pdf'"),
        (["--format", "tflite", "--quantize", "int4", "--output", str(tmp_path / "m.tflite")],
         "Unknown quantization 'int4'"),
        (["--format", "tflite", "--quantize", "int8", "--output", str(tmp_path / "m.tflite")],
         "needs calibration images: pass --calibration-data"),
        (["--format", "tflite", "--output", str(existing)], "already exists"),
    ]
    for args, message in cases:
        result = cli("export", str(model_path), *args, timeout=300)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert last_line(result).startswith("keras-resnet export: error:") and message in last_line(result)
    assert existing.read_bytes() == b"keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["taken.tflite"]


def test_files_that_are_not_models_are_refused_in_safe_mode(tmp_path):
    garbage = tmp_path / "notes.keras"
    garbage.write_text("not a zip")
    inputs = keras.Input((4,))
    unsafe = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs))
    unsafe.save(tmp_path / "lambda.keras")
    for path in (garbage, tmp_path / "lambda.keras"):
        result = cli("export", str(path), "--format", "tflite", "--output", str(tmp_path / "m.tflite"),
                     timeout=300)
        assert result.returncode == 2 and "is not a loadable .keras model" in last_line(result)
    assert "safe mode" in last_line(result) and "Lambda" in last_line(result)
