"""Decode how a worker ended into the reason an operator reads (logs, status, events).

Reasons (stable strings; docs/operations.md lists them):

* ``"ack timeout"``, ``"heartbeat stale"``, ``"boot timeout"`` -- the supervisor killed a wedged
  worker (counted as a crash)
* ``"memory limit"`` -- the worker exited with exitcodes.MEMORY (hit its rlimit)
* ``"boot failure"`` -- exitcodes.BOOT_FAILURE (raised before its first ack)
* ``"exit code N (NAME)"`` / ``"exit code N"`` -- any other exit status
* ``"killed by SIGNAME"`` -- died of a signal
* ``"killed by SIGKILL (OOM killer?)"`` -- a SIGKILL the supervisor did not send
* ``"recycled (soft memory limit)"``, ``"recycled (max age)"``, ``"recycled (worker request)"`` --
  voluntary, not counted
* ``"stopped"``, ``"restarted"``, ``"removed"``, ``"reloaded"`` -- supervisor-initiated, not counted
"""

import signal

from . import exitcodes

#: kill reasons: the supervisor decided the worker was wedged
ACK_TIMEOUT = "ack timeout"
HEARTBEAT_STALE = "heartbeat stale"
BOOT_TIMEOUT = "boot timeout"
#: voluntary / supervisor-initiated (never counted)
RECYCLED_MEMORY = "recycled (soft memory limit)"
RECYCLED_AGE = "recycled (max age)"
RECYCLED_WORKER = "recycled (worker request)"
STOPPED = "stopped"
RESTARTED = "restarted"
REMOVED = "removed"
RELOADED = "reloaded"


def signal_name(signum):
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def describe_status(exitcode):
    """Raw description of a multiprocessing exitcode (negative = killed by signal)."""
    if exitcode is None:
        return "unknown"
    if exitcode < 0:
        return f"killed by {signal_name(-exitcode)}"
    return exitcodes.describe(exitcode)


def exit_reason(exitcode, *, kill_reason=None, stop_reason=None, sent_sigkill=False):
    """Return ``(reason, counted)``. ``counted`` is True when the exit counts as a crash for the
    restart policy (backoff and intensity).

    ``kill_reason``: the supervisor was killing the worker as wedged (wins over the status).
    ``stop_reason``: the supervisor was stopping it on purpose (recycle, stop, restart, reload).
    ``sent_sigkill``: whether the supervisor itself sent SIGKILL to this worker.
    """
    if kill_reason:
        return kill_reason, True
    if stop_reason:
        return stop_reason, False
    if exitcode is None:
        return "unknown", True
    if exitcode == exitcodes.MEMORY:
        return "memory limit", True
    if exitcode == exitcodes.BOOT_FAILURE:
        return "boot failure", True
    if exitcode == exitcodes.RECYCLE:
        return RECYCLED_WORKER, False
    if exitcode >= 0:
        return exitcodes.describe(exitcode), True
    if -exitcode == signal.SIGKILL and not sent_sigkill:
        return "killed by SIGKILL (OOM killer?)", True
    return f"killed by {signal_name(-exitcode)}", True
