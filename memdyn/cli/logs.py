"""Console logging for memdyn's commands and launchers: memdyn's progress at INFO, libraries' chatter hidden."""

from __future__ import annotations

import logging as pylogging

from absl import logging


class _QuietLibraries(pylogging.Filter):
    """Orbax logs every save at INFO and read-only opens at WARNING, TFDS and seqio every dataset they open; keep
    their errors and memdyn's own logs. JAX's INFO is its probing for backends ("Unable to initialize backend
    'tpu'"); its warnings are kept."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        if record.name == "jax" or record.name.startswith("jax."):
            return record.levelno >= pylogging.WARNING
        return record.levelno >= pylogging.ERROR or not any(
            name in record.pathname for name in ("orbax", "tensorflow_datasets", "seqio")
        )


def configure() -> None:
    """memdyn's logs at INFO; the libraries' hidden as ``_QuietLibraries`` says, unless ``MEMDYN_VERBOSE=1``."""
    from memdyn.cli import main

    logging.set_verbosity(logging.INFO)
    handler = logging.get_absl_handler()
    if not main.verbose() and not any(isinstance(f, _QuietLibraries) for f in handler.filters):
        handler.addFilter(_QuietLibraries())
    logging.use_absl_handler()
