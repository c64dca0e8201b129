"""Logging for `pool start` and the embedded pool: stdlib logging, one line per event,
key=value fields. The supervisor reopens FileHandler streams on SIGUSR1 (log rotation)."""
import logging
import sys
from logging.handlers import WatchedFileHandler

FORMAT = "%(asctime)s %(levelname)s %(name)s pid=%(process)d %(message)s"


def configure(level="info", log_file=None):
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    # WatchedFileHandler re-opens a file moved away by logrotate on its next line, which covers
    # the workers (they inherit this handler across fork); SIGUSR1 re-opens the supervisor's at once
    handler = WatchedFileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(handler)
    root.setLevel(getattr(logging, str(level).upper(), logging.INFO))
