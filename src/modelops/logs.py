"""One logging set-up for every process this package starts (CLI commands, server workers)."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str | int) -> None:
    """Log to stderr at `level` (a name such as "info", or a logging constant)."""
    if isinstance(level, str):
        level = logging.getLevelName(level.upper())
    logging.basicConfig(level=level, format=FORMAT, force=True)
    # httpx logs every request at INFO: the registry polls, downloads and log uploads would drown ours
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(level if level == logging.DEBUG else max(level, logging.WARNING))
