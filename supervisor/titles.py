"""Process titles (setproctitle). Titles are an API: a stable prefix, role, pool name, detail.

    pool: supervisor [NAME] 7/8 ready restarts=3 fatal=1
    pool: worker [NAME] room:lobby joined

Set on state changes only, never per ack. ``POOL_NOSETPS=1`` (or macOS, or setproctitle missing)
turns them off. Never put a secret in a title: only slot ids and states.
"""

import os
import re
import sys

try:
    import setproctitle as _spt
except ImportError:  # pragma: no cover - a declared dependency
    _spt = None

_CTRL = re.compile(r"[\x00-\x1f\x7f]+")
_MAX = 200
_initialised = False


def enabled():
    return (_spt is not None and os.environ.get("POOL_NOSETPS", "") not in ("1", "true", "yes")
            and sys.platform != "darwin")


def init():
    """Call once early (before the environment is changed): setproctitle relocates environ on its
    first use, and this keeps that first use at a known, harmless point."""
    global _initialised
    if not _initialised and enabled():
        _spt.getproctitle()
        _initialised = True


def clean(text):
    return _CTRL.sub(" ", str(text))[:_MAX]


def set_title(title):
    if enabled():
        init()
        _spt.setproctitle(clean(title))


def get_title():
    return _spt.getproctitle() if _spt is not None else ""


def supervisor_title(prefix, name, ready, total, restarts=0, fatal=0, stopping=False):
    t = f"{prefix}: supervisor [{name}] {ready}/{total} ready"
    if restarts:
        t += f" restarts={restarts}"
    if fatal:
        t += f" fatal={fatal}"
    if stopping:
        t += " stopping"
    return clean(t)


def worker_title(prefix, name, detail):
    return clean(f"{prefix}: worker [{name}] {detail}")
