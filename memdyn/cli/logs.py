"""Console logging for memdyn's commands and launchers: memdyn's progress at INFO, libraries' chatter hidden."""

from __future__ import annotations

import logging as pylogging

from absl import logging


class _QuietLibraries(pylogging.Filter):
    """Orbax logs every save at INFO and read-only opens at WARNING, TFDS and seqio every dataset they open; keep
    their errors and memdyn's own logs."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        return record.levelno >= pylogging.ERROR or not any(
            name in record.pathname for name in ("orbax", "tensorflow_datasets", "seqio")
        )


def configure() -> None:
    logging.set_verbosity(logging.INFO)
    handler = logging.get_absl_handler()
    if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
        handler.addFilter(_QuietLibraries())
    logging.use_absl_handler()
