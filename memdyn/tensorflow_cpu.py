"""TensorFlow for memdyn's data pipelines and TensorBoard writer: on the CPU only.

seqio, TFDS and clu import TensorFlow. Left alone, TensorFlow on a GPU machine claims accelerator memory that JAX
needs. Importing this module first (every memdyn module that imports them does) hides the GPUs from TensorFlow
before it makes any device; JAX's own devices are untouched. TensorFlow's C++ log level is the caller's
(``TF_CPP_MIN_LOG_LEVEL``): the ``memdyn`` command sets it before anything imports TensorFlow
(``memdyn.cli.main.quiet_tensorflow``), and importing this module leaves the environment as it was.
"""

import tensorflow as tf

try:
    tf.config.set_visible_devices([], "GPU")  # probes CUDA now; TensorFlow then runs on the CPU
except RuntimeError:  # devices were initialized before memdyn was imported: leave them as they are
    pass
