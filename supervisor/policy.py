"""Restart policy: pure objects, clock and randomness injected, nothing here sleeps.

``Backoff``        exponential delay with jitter, reset by the caller after a stable run.
``Intensity``      counts crashes in a sliding window; more than ``max_restarts`` -> exceeded.
``RestartPolicy``  one per slot: combines both with ``min_uptime`` and ``fatal_retry`` and answers
                   "what now?" after a crash: ``("backoff", delay)`` or ``("fatal", retry_in)``.

Tests drive these with a fake clock and a fixed ``rng``; the supervisor passes
``time.monotonic`` and ``random.random``.
"""

import collections
import random
import time


class Backoff:
    """Delay before the n-th consecutive respawn: ``initial * multiplier**n`` capped at ``maximum``,
    then multiplied by a jitter factor in ``[1 - jitter, 1 + jitter)`` (and capped again), so a
    fleet that crashed together does not respawn together."""

    def __init__(self, initial=0.5, maximum=60.0, multiplier=2.0, jitter=0.2, rng=random.random):
        if initial <= 0 or maximum < initial or multiplier < 1 or not 0 <= jitter < 1:
            raise ValueError("need 0 < initial <= maximum, multiplier >= 1, 0 <= jitter < 1")
        self.initial = initial
        self.maximum = maximum
        self.multiplier = multiplier
        self.jitter = jitter
        self.rng = rng
        self.attempts = 0

    def base(self, attempt):
        # min() before the power would overflow for huge attempt counts
        exp = min(attempt, 1024)
        try:
            return min(self.maximum, self.initial * self.multiplier ** exp)
        except OverflowError:
            return self.maximum

    def next_delay(self):
        """The delay to wait now; advances the attempt counter."""
        base = self.base(self.attempts)
        self.attempts += 1
        factor = 1.0 + self.jitter * (2.0 * self.rng() - 1.0)
        return min(self.maximum, base * factor)

    def reset(self):
        self.attempts = 0


class Intensity:
    """More than ``max_restarts`` crashes within ``window`` seconds -> exceeded."""

    def __init__(self, max_restarts=5, window=60.0, clock=time.monotonic):
        if max_restarts < 0 or window <= 0:
            raise ValueError("need max_restarts >= 0 and window > 0")
        self.max_restarts = max_restarts
        self.window = window
        self.clock = clock
        self._times = collections.deque()

    def _prune(self, now):
        while self._times and now - self._times[0] >= self.window:
            self._times.popleft()

    def record(self):
        """Count one crash now; return True if the intensity is now exceeded."""
        now = self.clock()
        self._prune(now)
        self._times.append(now)
        # never keep more than needed to decide
        while len(self._times) > self.max_restarts + 1:
            self._times.popleft()
        return len(self._times) > self.max_restarts

    def count(self):
        """Crashes within the window as of now."""
        self._prune(self.clock())
        return len(self._times)

    def reset(self):
        self._times.clear()


class RestartPolicy:
    """What to do after a slot's worker crashed (counted exits only: voluntary recycles and
    supervisor-initiated stops never reach this object).

    * each crash -> ``("backoff", delay)`` with an exponentially growing, jittered delay;
    * the crash that makes it more than ``max_restarts`` within ``restart_window`` ->
      ``("fatal", fatal_retry)``: the slot stays down, visible, and is retried after fatal_retry;
    * a retried FATAL slot is on probation: one more crash before it was stable puts it straight
      back to FATAL (it does not get a fresh budget of quick restarts);
    * ``stable()``: the worker stayed ready for ``min_uptime``: forget past crashes.
    """

    def __init__(self, *, backoff_initial=0.5, backoff_max=60.0, max_restarts=5, restart_window=60.0,
                 fatal_retry=300.0, min_uptime=10.0, clock=time.monotonic, rng=random.random):
        self.clock = clock
        self.backoff = Backoff(backoff_initial, backoff_max, rng=rng)
        self.intensity = Intensity(max_restarts, restart_window, clock)
        self.fatal_retry = fatal_retry
        self.min_uptime = min_uptime
        self.probation = False

    def on_crash(self):
        exceeded = self.intensity.record()
        if exceeded or self.probation:
            self.probation = False
            self.intensity.reset()
            self.backoff.reset()
            return ("fatal", self.fatal_retry)
        return ("backoff", self.backoff.next_delay())

    def on_fatal_retry(self):
        """The FATAL slot is being started again after fatal_retry."""
        self.probation = True

    def is_stable(self, ready_since, now=None):
        """True once a worker has been ready continuously for min_uptime."""
        if ready_since is None:
            return False
        now = self.clock() if now is None else now
        return now - ready_since >= self.min_uptime

    def stable(self):
        """Called once the worker has been ready for min_uptime: forget past crashes."""
        self.backoff.reset()
        self.intensity.reset()
        self.probation = False

    def reset(self):
        """Operator restart or reload: a clean slate."""
        self.stable()


def jittered(seconds, fraction=0.1, rng=random.random):
    """``seconds`` plus up to ``fraction`` of it (used for max_age, so a fleet recycles spread out)."""
    return seconds * (1.0 + fraction * rng())
