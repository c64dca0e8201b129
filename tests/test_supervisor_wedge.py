"""Wedged workers are killed and replaced; the ack pipe and the ack file pass the same tests.

Each test runs a real supervisor in its own process (tests/supervisor_targets.py) whose workers are
told to wedge in one way each. The first worker of a slot misbehaves (``once``), its replacement is
healthy, so every test sees a wedge, a kill, and a recovery.
"""

import os

import pytest

from supervisor import exitcodes
from supervisor.core import DUMP_GRACE
from supervisor_fixtures import alive, supervise  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(90)

WEDGES = ["send", "spin", "sigstop", "deadlock"]
#: where the dumped stack must show the worker (faulthandler names the Python function)
STACK_FRAME = {"send": "_wedge_send", "spin": "_wedge_spin", "sigstop": "_wedge_sigstop",
               "deadlock": "_wedge_deadlock", "stale": "target", "silent": "target"}
#: scheduling slack on a loaded 2-core machine; the guarantee is about the supervisor's timing
SLACK = 1.0


@pytest.fixture(params=["pipe", "file"])
def liveness(request):
    return request.param


def test_wedged_workers_are_killed_and_replaced(supervise, liveness, tmp_path):  # noqa: F811
    # kill_timeout leaves a worker spinning in C (GIL held) time to be scheduled and write its
    # stack dump even on an overloaded machine (production's default is 5 s)
    ack_deadline, kill_timeout, boot_timeout, heartbeat_limit = 1.0, 1.5, 1.5, 1.5
    # the heartbeat check judges the age a worker reports in its acks; a worker whose acks stop
    # is an "ack timeout", whatever its last reported heartbeat age was
    sweep = 0.0 if liveness == "pipe" else min(0.5, 0.1)

    def once(name):
        return str(tmp_path / name)
    slots = [{"slot": w, "mode": w, "once": once(w), "healthy_for": 0.5} for w in WEDGES]
    slots += [
        {"slot": "stale", "mode": "stale", "once": once("stale")},
        {"slot": "silent", "mode": "silent", "once": once("silent")},
        {"slot": "degraded", "mode": "degraded"},
        {"slot": "ok", "mode": "healthy"},
    ]
    sp = supervise(slots, liveness=liveness, ack_deadline=ack_deadline, kill_timeout=kill_timeout,
                   boot_timeout=boot_timeout, heartbeat_limit=heartbeat_limit, wait_ready=False)
    first_pid = {}
    for s in slots:
        first_pid[s["slot"]] = sp.wait_event("spawned", slot=s["slot"])["pid"]

    expected = {w: "ack timeout" for w in WEDGES}
    expected.update(stale="heartbeat stale", silent="boot timeout")
    for slot, reason in expected.items():
        kill = sp.wait_event("kill", slot=slot)
        assert kill["reason"] == reason, kill
        assert kill["pid"] == first_pid[slot]
        if reason == "ack timeout":
            # killed after ack_deadline of silence, not before, and within one sweep (+ slack)
            assert ack_deadline <= kill["silent_for"] <= ack_deadline + sweep + SLACK, kill
        elif reason == "boot timeout":
            assert boot_timeout <= kill["silent_for"] <= boot_timeout + sweep + SLACK, kill
        else:
            assert heartbeat_limit <= kill["heartbeat_age"] <= heartbeat_limit + sweep + SLACK, kill
        exited = sp.wait_event("exited", slot=slot, pid=first_pid[slot])
        assert exited["reason"] == reason and exited["counted"] is True
        # escalation by elapsed time: dump, TERM after DUMP_GRACE, KILL after kill_timeout
        assert exited["time"] - kill["time"] <= DUMP_GRACE + kill_timeout + SLACK
        ready = sp.wait_event("ready", slot=slot, since=exited["_index"])
        assert ready["pid"] != first_pid[slot]
        assert not alive(first_pid[slot])

    status = sp.status()
    by_slot = {s["slot"]: s for s in status["slots"]}
    # alive but not ready: reported as degraded, never killed (a restart would not help)
    assert by_slot["degraded"]["state"] == "DEGRADED"
    assert by_slot["degraded"]["worker_state"] == "connecting"
    assert by_slot["degraded"]["pid"] == first_pid["degraded"]
    assert by_slot["degraded"]["uptime"] > 2 * ack_deadline
    # the healthy sibling was never touched
    assert by_slot["ok"]["pid"] == first_pid["ok"] and by_slot["ok"]["restarts"] == 0
    assert not sp.find("kill", slot="ok") and not sp.find("kill", slot="degraded")
    for slot in expected:
        assert by_slot[slot]["state"] == "RUNNING" and by_slot[slot]["restarts"] == 1
        assert by_slot[slot]["exit_reasons"][-1]["reason"] == expected[slot]

    assert sp.stop() == exitcodes.OK
    log = sp.log()
    # the stack of each wedged worker reached the log (faulthandler on the dump signal), even when
    # it was stuck in C holding the GIL or stopped
    for slot in WEDGES:
        assert f"in {STACK_FRAME[slot]}" in log, f"no stack dump for {slot}"
    assert "Thread 0x" in log or "Current thread 0x" in log
    assert "wchan=" in log


@pytest.mark.parametrize("kind", ["data", "as"])
def test_memory_growth_dies_at_the_limit_alone(supervise, liveness, kind, tmp_path):  # noqa: F811
    limit = 128 * 2**20 if kind == "data" else 256 * 2**20
    sp = supervise([{"slot": "hog", "mode": "memory", "once": str(tmp_path / "hog"), "chunk_mb": 8},
                    {"slot": "ok", "mode": "healthy"}],
                   liveness=liveness, memory_limit=limit, memory_limit_kind=kind, wait_ready=False)
    hog = sp.wait_event("spawned", slot="hog")["pid"]
    ok = sp.wait_event("spawned", slot="ok")["pid"]
    sp.wait_event("ready", slot="ok")
    sup_rss_before = sp.status()["supervisor"]["rss"]
    exited = sp.wait_event("exited", slot="hog", pid=hog)
    assert exited["reason"] == "memory limit", exited
    assert exited["exitcode"] == exitcodes.MEMORY
    sp.wait_event("ready", slot="hog", since=exited["_index"])          # replaced
    st = sp.status()
    by_slot = {s["slot"]: s for s in st["slots"]}
    assert by_slot["ok"]["pid"] == ok and by_slot["ok"]["restarts"] == 0   # sibling untouched
    assert st["supervisor"]["pid"] == sp.proc.pid
    assert st["supervisor"]["rss"] - sup_rss_before < 4 * 2**20          # supervisor untouched
    assert "MemoryError" in sp.log()
    assert sp.stop() == exitcodes.OK
