"""Reconnect and rejoin delays: the phoenix.js schedules plus jitter, computed with tenacity.

The worker never sleeps on these: it asks for the delay of attempt N and schedules a wake-up
in its own loop, so acks keep flowing while it waits.
"""
import tenacity

# phoenix.js socket.js reconnectAfterMs and channel.js rejoinAfterMs, in seconds
RECONNECT_SCHEDULE = (0.01, 0.05, 0.1, 0.15, 0.2, 0.25, 0.5, 1.0, 2.0, 5.0)
REJOIN_SCHEDULE = (1.0, 2.0, 5.0, 10.0)
FORBIDDEN_SCHEDULE = (30.0, 60.0)  # a 403 will not heal quickly: retry slowly


class Schedule:
    """Delay before attempt ``n`` (1-based): the n-th step of ``steps`` (the last one repeats)
    plus up to ``jitter`` of it at random, so a fleet does not retry in lockstep."""

    def __init__(self, steps, jitter=0.25):
        steps = tuple(float(s) for s in steps)
        if not steps or any(s < 0 for s in steps):
            raise ValueError("a backoff schedule needs one or more non-negative delays")
        self.steps = steps
        self._wait = tenacity.wait_chain(
            *[tenacity.wait_fixed(s) + tenacity.wait_random(0, s * jitter) for s in steps])

    def delay(self, attempt):
        state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})
        state.attempt_number = max(1, int(attempt))
        return self._wait(state)
