"""The model core on the JAX backend (keras / keras.ops only; no TensorFlow import)."""

import pytest

from conftest import run_python


def test_jax_backend_builds_and_fits_without_tensorflow():
    result = run_python(
        "import sys, numpy as np, keras, keras_resnet as kr\n"
        "assert keras.backend.backend() == 'jax'\n"
        "m = kr.build(20, se_ratio=0.25, drop_path_rate=0.1)\n"
        "m.compile('sgd', 'sparse_categorical_crossentropy')\n"
        "h = m.fit(np.random.rand(32, 32, 32, 3), np.arange(32) % 10, epochs=2, verbose=0)\n"
        "assert all(np.isfinite(h.history['loss']))\n"
        "assert kr.count_params(kr.build(50)) == 25_557_032\n"
        "print('tensorflow' in sys.modules)\n",
        env={"KERAS_BACKEND": "jax"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_channels_first_matches_channels_last():
    result = run_python(
        "import numpy as np, keras, keras_resnet as kr\n"
        "for depth in (20, 18):\n"
        "    last = kr.build(depth, input_shape=(32, 32, 3))\n"
        "    keras.config.set_image_data_format('channels_first')\n"
        "    first = kr.build(depth, input_shape=(3, 32, 32))\n"
        "    keras.config.set_image_data_format('channels_last')\n"
        "    first.set_weights(last.get_weights())\n"
        "    x = np.random.rand(2, 32, 32, 3).astype('float32')\n"
        "    a = last.predict(x, verbose=0)\n"
        "    b = first.predict(x.transpose(0, 3, 1, 2), verbose=0)\n"
        "    assert np.abs(a - b).max() < 1e-5, (depth, np.abs(a - b).max())\n"
        "print('ok')\n",
        env={"KERAS_BACKEND": "jax"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_torch_backend_builds_and_fits_without_tensorflow():
    """Runs where PyTorch is installed (`pip install torch==2.13.0`, CPU); not in the test
    extra, which would pull a multi-GB CUDA build."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        pytest.skip("PyTorch is not installed")
    result = run_python(
        "import sys, numpy as np, keras, keras_resnet as kr\n"
        "assert keras.backend.backend() == 'torch'\n"
        "m = kr.build(8, variant='cifar', se_ratio=0.25)\n"
        "m.compile(keras.optimizers.SGD(0.05, momentum=0.9), 'sparse_categorical_crossentropy')\n"
        "x = np.random.default_rng(0).uniform(0, 255, (32, 32, 32, 3)).astype('float32')\n"
        "h = m.fit(x, np.arange(32) % 10, batch_size=8, epochs=3, verbose=0).history['loss']\n"
        "assert all(np.isfinite(h)) and h[-1] < h[0], h\n"
        "assert kr.count_params(kr.build(50)) == 25_557_032\n"
        "print('tensorflow' in sys.modules)\n",
        env={"KERAS_BACKEND": "torch"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "False"
