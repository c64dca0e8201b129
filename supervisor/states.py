"""Slot states and the only transitions allowed between them.

A *slot* is one supervised unit (the pool uses one per channel topic). It holds at most one worker
process at a time. ``Supervisor._set_state`` is the one place that changes a slot's state; it calls
``check_transition`` so an impossible change is a loud bug, never a silent one.

::

    STOPPED  --spawn-->  STARTING  --first ack, ready-->      RUNNING  <--ack-->  DEGRADED
                             |    --first ack, not ready-->  DEGRADED
                             v
    (kill / graceful stop)  STOPPING  --exit-->  BACKOFF | FATAL | STOPPED
    (worker died by itself) STARTING/RUNNING/DEGRADED  --exit-->  BACKOFF | FATAL | STOPPED
    BACKOFF --delay elapsed--> STARTING          FATAL --fatal_retry elapsed--> STARTING
"""

import enum

from .errors import IllegalTransition


class SlotState(enum.Enum):
    STOPPED = "STOPPED"      # no worker, none wanted (not yet started, removed, or supervisor stopping)
    STARTING = "STARTING"    # worker forked, no ack yet (boot_timeout applies)
    RUNNING = "RUNNING"      # acking and ready (e.g. channel joined)
    DEGRADED = "DEGRADED"    # acking (alive) but not ready: reported, never killed for it
    STOPPING = "STOPPING"    # the supervisor is stopping or killing this worker
    BACKOFF = "BACKOFF"      # worker gone; respawn when the backoff delay has elapsed
    FATAL = "FATAL"          # too many crashes in restart_window; retried after fatal_retry

    def __str__(self):
        return self.value


S = SlotState

#: states in which a worker process exists (or may still exist)
LIVE = frozenset({S.STARTING, S.RUNNING, S.DEGRADED, S.STOPPING})

TRANSITIONS = {
    S.STOPPED: frozenset({S.STARTING, S.BACKOFF}),
    S.STARTING: frozenset({S.RUNNING, S.DEGRADED, S.STOPPING, S.BACKOFF, S.FATAL, S.STOPPED}),
    S.RUNNING: frozenset({S.DEGRADED, S.STOPPING, S.BACKOFF, S.FATAL, S.STOPPED}),
    S.DEGRADED: frozenset({S.RUNNING, S.STOPPING, S.BACKOFF, S.FATAL, S.STOPPED}),
    S.STOPPING: frozenset({S.BACKOFF, S.FATAL, S.STOPPED}),
    S.BACKOFF: frozenset({S.STARTING, S.STOPPED}),
    S.FATAL: frozenset({S.STARTING, S.STOPPED}),
}


def check_transition(old, new):
    """Raise IllegalTransition unless ``old -> new`` is allowed (a self-transition is not)."""
    if new not in TRANSITIONS[old]:
        raise IllegalTransition(f"slot state {old} cannot change to {new}")
