"""Exit codes are an interface: one distinct small int per way a worker (or the supervisor) ends.

Worker exit codes (the supervisor decodes them into exit reasons, see ``describe``):

=============  ====  =======================================================================
OK             0     the target returned (or raised ``SystemExit(0)``)
BOOT_FAILURE   3     the target raised before its first ``ctx.ack()``, or child setup failed
UNEXPECTED     4     the target raised an exception after its first ack
MEMORY         5     a ``MemoryError`` reached the top of the worker (anywhere in the chain)
LOST_PARENT    6     the worker noticed its supervisor is gone and exited
RECYCLE        7     the worker asked to be replaced (voluntary; not counted as a crash)
=============  ====  =======================================================================

Supervisor exit code (``Supervisor.run()``; also ``pool start``):

=============  ====  =======================================================================
OK             0     stopped by signal (TERM/INT/QUIT) or by the control command ``stop``
ALL_FATAL      8     every slot is FATAL: let systemd / Kubernetes take over
=============  ====  =======================================================================

1 and 2 are left out on purpose: Python uses 1 for an uncaught exception and 2 for usage errors.
"""

OK = 0
BOOT_FAILURE = 3
UNEXPECTED = 4
MEMORY = 5
LOST_PARENT = 6
RECYCLE = 7
ALL_FATAL = 8

_NAMES = {
    OK: "OK",
    BOOT_FAILURE: "BOOT_FAILURE",
    UNEXPECTED: "UNEXPECTED",
    MEMORY: "MEMORY",
    LOST_PARENT: "LOST_PARENT",
    RECYCLE: "RECYCLE",
    ALL_FATAL: "ALL_FATAL",
}


def name(code):
    """Name of a known exit code (``"MEMORY"``), or None."""
    return _NAMES.get(code)


def describe(code):
    """``"exit code 5 (MEMORY)"``, or ``"exit code 9"`` for a code without a name."""
    n = _NAMES.get(code)
    return f"exit code {code} ({n})" if n else f"exit code {code}"
