"""TensorFlow for memdyn's data pipelines and TensorBoard writer: on the CPU only, and quiet.

seqio, TFDS and clu import TensorFlow. Left alone, TensorFlow probes for CUDA (printing a "failed call to cuInit"
error on every CPU-only machine) and on a GPU machine claims accelerator memory that JAX needs. Importing this
module first (every memdyn module that imports them does) hides the GPUs from TensorFlow before it makes any
device, with its C++ logging at errors-off while it starts; JAX's own devices are untouched.
"""

import os

_previous = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # read once, when TensorFlow first logs: during the import below
try:
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")  # probes CUDA now, silently; TensorFlow then runs on the CPU
    except RuntimeError:  # devices were initialized before memdyn was imported: leave them as they are
        pass
finally:
    if _previous is None:
        os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
    else:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = _previous
