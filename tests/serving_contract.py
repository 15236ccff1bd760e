"""TF Serving's request handling, reproduced for tests (the server binary is not installable
here): gRPC `PredictRequest` protos and REST JSON (row `instances` and columnar `inputs`
formats, `{"b64": ...}` for strings) converted to tensors as the server does, then run on the
loaded signature. No server runs; this checks the contract a server applies."""

from __future__ import annotations

import base64

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2


def _input_specs(signature) -> dict[str, tf.TensorSpec]:
    return signature.structured_input_signature[1]


def grpc_predict(loaded, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
    """What the server does with a PredictRequest: pick the signature, convert each
    TensorProto to a tensor of the request's own dtype (the server casts nothing), run the
    SavedModel's signature on them, and pack every output as a TensorProto. A tensor of the
    wrong dtype is refused by the signature itself (InvalidArgumentError), as the server's
    session refuses it."""
    signature = loaded.signatures[request.model_spec.signature_name or "serving_default"]
    specs = _input_specs(signature)
    if set(request.inputs) != set(specs):
        raise ValueError(f"inputs {sorted(request.inputs)} != signature inputs {sorted(specs)}")
    inputs = {name: tf.constant(tf.make_ndarray(request.inputs[name])) for name in specs}
    response = predict_pb2.PredictResponse()
    response.model_spec.CopyFrom(request.model_spec)
    for key, value in signature(**inputs).items():
        response.outputs[key].CopyFrom(tf.make_tensor_proto(value.numpy()))
    return response


def _decode_b64(value):
    if isinstance(value, dict):
        if set(value) != {"b64"}:
            raise ValueError(f"a JSON object as a value must be {{'b64': ...}}, not {sorted(value)}")
        return base64.b64decode(value["b64"])
    if isinstance(value, list):
        return [_decode_b64(v) for v in value]
    return value


def rest_predict(loaded, body: dict) -> dict:
    """What the server does with a REST `:predict` body: row format (`instances`) answers
    `{"predictions": [...]}`, columnar (`inputs`) answers `{"outputs": ...}`."""
    signature = loaded.signatures[body.get("signature_name", "serving_default")]
    specs = _input_specs(signature)
    names = list(specs)
    if "instances" in body:
        instances = body["instances"]
        named = all(isinstance(i, dict) and set(i) <= set(names) and "b64" not in i for i in instances)
        columns = ({n: [i[n] for i in instances] for n in names} if named
                   else {names[0]: instances} if len(names) == 1 else None)
    else:
        inputs = body["inputs"]
        columns = inputs if isinstance(inputs, dict) and "b64" not in inputs else {names[0]: inputs}
    if columns is None or set(columns) != set(names):
        raise ValueError(f"request names {sorted(columns or [])}, signature wants {names}")
    tensors = {n: tf.constant(np.asarray(_decode_b64(columns[n])), dtype=specs[n].dtype) for n in names}
    outputs = {k: v.numpy() for k, v in signature(**tensors).items()}

    def jsonable(array):
        if array.dtype.kind in "SO":
            return np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(array).tolist()
        return array.tolist()

    if "instances" in body:
        count = len(next(iter(outputs.values())))
        return {"predictions": [{k: jsonable(v[i]) if v.ndim > 1 else jsonable(v[i:i + 1])[0]
                                 for k, v in outputs.items()} for i in range(count)]}
    return {"outputs": {k: jsonable(v) for k, v in outputs.items()}}
