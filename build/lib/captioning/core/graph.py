"""TensorFlow helpers every graph-building part of the package shares: graph functions without autograph, and
float32 tensors over NumPy memory without a copy."""
from __future__ import annotations

import numpy as np
import tensorflow as tf


def graph_function(function, **kwargs):
    """tf.function without autograph, for this package's graph code (plain TensorFlow ops, no Python control flow
    over tensors). Autograph reads a function's source from disk when it traces, at the line numbers of the module
    already imported, so an edit of the package under a running search broke the search's next trace."""
    return tf.function(function, autograph=False, **kwargs)


ALIGN = 64  # bytes: what TensorFlow's kernels require of a buffer they did not allocate


def aligned_zeros(shape: tuple[int, ...]) -> np.ndarray:
    """float32 zeros whose buffer starts on an ALIGN-byte boundary, so that host_tensor need not copy them."""
    size = int(np.prod(shape)) * 4
    buffer = np.zeros(size + ALIGN, np.uint8)
    offset = -buffer.ctypes.data % ALIGN
    return buffer[offset:offset + size].view(np.float32).reshape(shape)


def host_tensor(array: np.ndarray) -> tf.Tensor:
    """A float32 tensor over the array's own memory. TensorFlow's conversion copies, at a fraction of memory speed
    here (90 ms for a decoding batch's 100 MB of maps, as long as projecting them); DLPack hands the buffer over.
    An array that is read-only, not aligned or not float32 is copied first (by NumPy, 5x faster). The caller must
    not write to the array while the tensor is in use (here: fresh arrays, read once)."""
    array = np.asarray(array)
    if not (array.dtype == np.float32 and array.flags.c_contiguous and array.flags.writeable
            and array.ctypes.data % ALIGN == 0):  # (one copy, converting as it goes)
        copy = aligned_zeros(array.shape)
        copy[...] = array
        array = copy
    return tf.experimental.dlpack.from_dlpack(array.__dlpack__())


