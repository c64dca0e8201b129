"""Exceptions raised by the supervisor package."""


class SupervisorError(Exception):
    """Base class for every error this package raises on purpose."""


class ConfigError(SupervisorError, ValueError):
    """A setting or a worker spec is invalid; the message names the key and the fix."""


class AlreadyRunning(SupervisorError):
    """Another supervisor holds the pid file lock of this run_dir."""

    def __init__(self, pidfile, pid=None):
        self.pidfile = pidfile
        self.pid = pid
        who = f"pid {pid}" if pid else "another process"
        super().__init__(
            f"another supervisor ({who}) is already running: {pidfile} is locked; "
            f"stop it first or use another run_dir"
        )


class IllegalTransition(SupervisorError):
    """A slot was asked to change to a state that its current state cannot lead to (a bug)."""


class ControlError(SupervisorError):
    """Base class of the control-socket client errors raised by supervisor.control.request()."""


class ControlUnavailable(ControlError):
    """Nothing listens on the control socket (supervisor not running, or no permission)."""


class ControlTimeout(ControlError):
    """The supervisor did not answer within the timeout."""


class ControlProtocolError(ControlError):
    """The peer sent something that is not a valid reply frame (or closed mid-reply)."""
