"""Row operations on a decoder's per-row states and context, for NumPy arrays and TensorFlow tensors alike, so that
one greedy and beam search (captioning.decoding.search) and one ensemble (captioning.models.ensemble) serve the Keras
step decoders of training and the exported ones of inference (captioning.inference), which hold NumPy arrays.

Each function works on what it is given: NumPy arrays by NumPy, anything else by TensorFlow, imported only then, so
that a process decoding an export never loads it. TensorFlow's path is the op the search used before, without a copy.
"""
from __future__ import annotations

import numpy as np


def _numpy(x) -> bool:
    return isinstance(x, np.ndarray)


def gather(x, index: np.ndarray):
    """Rows `index` of x (a new array or tensor)."""
    if _numpy(x):
        return x[index]
    import tensorflow as tf

    return tf.gather(x, index)


def scatter(x, index: np.ndarray, rows):
    """x with its rows `index` replaced by `rows` (x itself is left as it was: a state may be shared)."""
    if _numpy(x):
        out = x.copy()
        out[index] = rows
        return out
    import tensorflow as tf

    return tf.tensor_scatter_nd_update(x, index[:, None], rows)


def repeat(x, times: int):
    """Each row of x `times` times in a row (a beam's copies of its image's rows)."""
    if _numpy(x):
        return np.repeat(x, times, axis=0)
    import tensorflow as tf

    return tf.repeat(x, times, axis=0)


def to_numpy(x) -> np.ndarray:
    """x as a NumPy array (a tensor's values)."""
    return x if _numpy(x) else x.numpy()


def log_mean_exp(values: list):
    """log(mean(exp(v))) over a list of equally shaped arrays: the log of the mean of several distributions."""
    if all(_numpy(v) for v in values):
        stacked = np.stack(values)
        peak = np.max(stacked, axis=0)
        safe = np.where(np.isfinite(peak), peak, 0.0)  # a row position that is -inf in every member stays -inf
        with np.errstate(divide="ignore"):
            return (np.log(np.mean(np.exp(stacked - safe), axis=0)) + safe).astype(stacked.dtype)
    import tensorflow as tf

    return tf.reduce_logsumexp(tf.stack(values), axis=0) - np.log(len(values)).astype(np.float32)


def mean(values: list):
    """The element-wise mean of a list of equally shaped arrays."""
    if all(_numpy(v) for v in values):
        return np.mean(np.stack(values), axis=0)
    import tensorflow as tf

    return tf.reduce_mean(tf.stack(values), axis=0)


def top_k(values, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest entries of each row and their column indices, as NumPy arrays (rows, k), largest first, ties by
    the lower index (as tf.math.top_k)."""
    if not _numpy(values):
        import tensorflow as tf

        best, ids = tf.math.top_k(values, k)
        return best.numpy(), ids.numpy()
    ids = np.argsort(-values, axis=1, kind="stable")[:, :k]  # (a stable sort: ties keep the lower index first)
    return np.take_along_axis(values, ids, axis=1), ids.astype(np.int32)
