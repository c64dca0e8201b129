"""Pure parts of the supervisor, tested without processes and without sleeping."""

import json
import os
import signal
import socket
import struct

import pytest

from supervisor import SupervisorConfig, WorkerSpec, exitcodes, reasons
from supervisor import ack as ackmod
from supervisor import titles
from supervisor.config import validate_specs
from supervisor.control import MAX_FRAME, FrameDecoder, FrameError, encode_frame
from supervisor.errors import ConfigError, IllegalTransition
from supervisor.notify import Notifier
from supervisor.policy import Backoff, Intensity, RestartPolicy, jittered
from supervisor.states import LIVE, TRANSITIONS, SlotState, check_transition


class FakeClock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t

    def advance(self, dt):
        self.t += dt


# ------------------------------------------------------------------------------------ policy
def test_backoff_doubles_caps_and_resets():
    b = Backoff(0.5, 60.0, jitter=0.0)
    assert [b.next_delay() for _ in range(9)] == [0.5, 1, 2, 4, 8, 16, 32, 60, 60]
    b.reset()
    assert b.next_delay() == 0.5


def test_backoff_jitter_stays_in_band_and_under_cap():
    lo = Backoff(1.0, 10.0, jitter=0.2, rng=lambda: 0.0)
    hi = Backoff(1.0, 10.0, jitter=0.2, rng=lambda: 0.999999)
    assert lo.next_delay() == pytest.approx(0.8)
    assert hi.next_delay() == pytest.approx(1.2, rel=1e-5)
    for _ in range(10):
        hi.next_delay()
    assert hi.next_delay() <= 10.0


def test_backoff_huge_attempt_count_does_not_overflow():
    b = Backoff(0.5, 60.0, jitter=0.0)
    b.attempts = 10**6
    assert b.next_delay() == 60.0


def test_intensity_counts_within_window_only():
    clock = FakeClock()
    i = Intensity(max_restarts=3, window=10.0, clock=clock)
    assert [i.record() for _ in range(3)] == [False, False, False]
    assert i.record() is True                     # the 4th within 10 s: more than 3
    i.reset()
    for _ in range(3):
        assert not i.record()
        clock.advance(4.0)                        # spread out: old crashes leave the window
    assert not i.record()
    assert i.count() <= 3


def test_intensity_zero_restarts_means_first_crash_is_fatal():
    i = Intensity(max_restarts=0, window=60, clock=FakeClock())
    assert i.record() is True


def test_restart_policy_backoff_then_fatal_then_probation():
    clock = FakeClock()
    p = RestartPolicy(backoff_initial=1, backoff_max=100, max_restarts=3, restart_window=60,
                      fatal_retry=300, min_uptime=10, clock=clock, rng=lambda: 0.5)
    decisions = [p.on_crash() for _ in range(4)]
    assert decisions[:3] == [("backoff", 1), ("backoff", 2), ("backoff", 4)]
    assert decisions[3] == ("fatal", 300)
    # retried after fatal_retry: one more crash before being stable -> FATAL again at once
    clock.advance(300)
    p.on_fatal_retry()
    assert p.on_crash() == ("fatal", 300)
    # retried again and stays up: stable() forgives everything
    p.on_fatal_retry()
    assert not p.is_stable(clock(), clock())
    assert p.is_stable(clock() - 10, clock())
    p.stable()
    assert p.on_crash() == ("backoff", 1)


def test_restart_policy_slow_crashes_never_go_fatal():
    clock = FakeClock()
    p = RestartPolicy(backoff_initial=1, backoff_max=4, max_restarts=2, restart_window=10,
                      fatal_retry=300, min_uptime=10, clock=clock, rng=lambda: 0.5)
    for _ in range(20):
        kind, delay = p.on_crash()
        assert kind == "backoff" and delay <= 4
        clock.advance(6)


def test_jittered_max_age():
    assert jittered(100, 0.1, rng=lambda: 0.0) == 100
    assert jittered(100, 0.1, rng=lambda: 0.999) == pytest.approx(109.99)


# ------------------------------------------------------------------------------------ states
def test_transitions_are_explicit():
    check_transition(SlotState.STOPPED, SlotState.STARTING)
    check_transition(SlotState.FATAL, SlotState.STARTING)
    check_transition(SlotState.DEGRADED, SlotState.RUNNING)
    with pytest.raises(IllegalTransition):
        check_transition(SlotState.BACKOFF, SlotState.RUNNING)   # no worker to be running
    with pytest.raises(IllegalTransition):
        check_transition(SlotState.STOPPING, SlotState.RUNNING)  # a kill is never undone
    with pytest.raises(IllegalTransition):
        check_transition(SlotState.RUNNING, SlotState.RUNNING)
    assert set(TRANSITIONS) == set(SlotState)
    assert SlotState.BACKOFF not in LIVE and SlotState.STOPPING in LIVE


# ------------------------------------------------------------------------------------ exit reasons
@pytest.mark.parametrize("exitcode, kw, expected", [
    (-9, {}, ("killed by SIGKILL (OOM killer?)", True)),
    (-9, {"sent_sigkill": True}, ("killed by SIGKILL", True)),
    (-11, {}, ("killed by SIGSEGV", True)),
    (exitcodes.MEMORY, {}, ("memory limit", True)),
    (exitcodes.BOOT_FAILURE, {}, ("boot failure", True)),
    (exitcodes.UNEXPECTED, {}, ("exit code 4 (UNEXPECTED)", True)),
    (exitcodes.LOST_PARENT, {}, ("exit code 6 (LOST_PARENT)", True)),
    (0, {}, ("exit code 0 (OK)", True)),
    (1, {}, ("exit code 1", True)),
    (exitcodes.RECYCLE, {}, ("recycled (worker request)", False)),
    (-9, {"kill_reason": "ack timeout", "sent_sigkill": True}, ("ack timeout", True)),
    (0, {"kill_reason": "heartbeat stale"}, ("heartbeat stale", True)),
    (-15, {"stop_reason": "recycled (max age)"}, ("recycled (max age)", False)),
    (exitcodes.MEMORY, {"stop_reason": "stopped"}, ("stopped", False)),
])
def test_exit_reason(exitcode, kw, expected):
    assert reasons.exit_reason(exitcode, **kw) == expected


def test_exitcodes_are_distinct_small_and_named():
    codes = [exitcodes.OK, exitcodes.BOOT_FAILURE, exitcodes.UNEXPECTED, exitcodes.MEMORY,
             exitcodes.LOST_PARENT, exitcodes.RECYCLE, exitcodes.ALL_FATAL]
    assert len(set(codes)) == len(codes)
    assert 1 not in codes and 2 not in codes
    assert all(0 <= c < 64 for c in codes)
    assert exitcodes.name(exitcodes.MEMORY) == "MEMORY"
    assert exitcodes.name(99) is None
    assert exitcodes.describe(exitcodes.RECYCLE) == "exit code 7 (RECYCLE)"


# ------------------------------------------------------------------------------------ acks
def test_ack_roundtrip_and_size_bound():
    rec = ackmod.decode(ackmod.encode("joined", True, 1.23456, {"acks": 3}))
    assert (rec.state, rec.ready, rec.heartbeat_age, rec.info) == ("joined", True, 1.235, {"acks": 3})
    big = ackmod.encode("joined", True, None, {"x": "y" * 2000})
    assert len(big) < ackmod.MAX_ACK
    assert ackmod.decode(big).info == {"truncated": True}
    assert ackmod.decode(b"not json") is None
    assert ackmod.decode(b"[1,2]") is None
    assert ackmod.decode(b'{"s":"x","r":"yes","h":true}').ready is False


def test_pipe_reader_keeps_newest_bounds_lines_and_sees_eof():
    reader, w = ackmod.make_pipe()
    try:
        os.write(w, ackmod.encode("a") + b"\n" + ackmod.encode("b", True) + b"\n" + b'{"s":"par')
        got, rec = reader.read()
        assert got and rec.state == "b" and rec.ready
        os.write(w, b'tial"}\n')
        got, rec = reader.read()
        assert got and rec.state == "partial"
        os.write(w, b"z" * 10000)            # an oversized line is discarded, not buffered
        assert reader.read() == (False, None)
        os.write(w, b"zz\n" + ackmod.encode("c") + b"\n")
        got, rec = reader.read()
        assert got and rec.state == "c"
        assert reader.read() == (False, None)     # nothing pending: no block
    finally:
        os.close(w)
    assert reader.read() == (False, None) and reader.eof
    reader.close()


def test_pipe_writer_never_blocks_on_a_full_pipe():
    reader, w = ackmod.make_pipe()
    writer = ackmod.PipeAckWriter(w)
    for _ in range(5000):                    # far more than a pipe holds
        writer.write(ackmod.encode("x" * 60, True))
    assert not writer.broken
    reader.close()
    writer.write(b"{}")
    assert writer.broken                     # EPIPE once the reader is gone
    os.close(w)


def test_file_ack_detects_change_and_rejects_torn_records(tmp_path):
    d = ackmod.choose_ack_dir(str(tmp_path)) or pytest.skip("no tmpfs here")
    reader, fd = ackmod.make_file(d)
    try:
        assert os.fstat(fd).st_nlink == 0                # created, then unlinked at once
        assert reader.read() == (False, None)
        writer = ackmod.FileAckWriter(fd)
        writer.write(ackmod.encode("joined", True))
        got, rec = reader.read()
        assert got and rec.state == "joined"
        assert reader.read() == (False, None)            # no change, no ack
        writer.write(ackmod.encode("joined", True))      # same content, new seq: an ack
        got, _ = reader.read()
        assert got
        data = ackmod.encode_file_record(99, b'{"s":"x"}')
        os.pwrite(fd, data[:-3] + b"zzz", 0)              # torn / corrupt record
        assert ackmod.decode_file_record(os.pread(fd, 600, 0)) is None
    finally:
        reader.close()


def test_file_liveness_refuses_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(ackmod, "is_tmpfs", lambda p: False)
    assert ackmod.choose_ack_dir(str(tmp_path)) is None


# ------------------------------------------------------------------------------------ frames
def test_frame_roundtrip_and_limits():
    dec = FrameDecoder()
    frame = encode_frame({"cmd": "status"})
    out = []
    for i in range(len(frame)):                       # byte by byte
        out += dec.feed(frame[i:i + 1])
    assert out == [{"cmd": "status"}]
    with pytest.raises(FrameError):
        FrameDecoder().feed(struct.pack(">I", MAX_FRAME + 1))
    with pytest.raises(FrameError):
        FrameDecoder().feed(struct.pack(">I", 0))
    with pytest.raises(FrameError):
        FrameDecoder().feed(struct.pack(">I", 3) + b"\xff\xfe\xfd")
    with pytest.raises(FrameError):
        FrameDecoder().feed(struct.pack(">I", 3) + b"{{{")
    with pytest.raises(ValueError):
        encode_frame({"x": "y" * MAX_FRAME})


# ------------------------------------------------------------------------------------ config
def test_config_validation_names_the_key(tmp_path):
    ok = SupervisorConfig(run_dir=str(tmp_path))
    ok.validate()
    assert ok.effective_boot_timeout == ok.ack_deadline
    bad = {
        "ack_deadline": dict(ack_interval=1.0, ack_deadline=1.5),
        "liveness": dict(liveness="udp"),
        "memory_limit_kind": dict(memory_limit_kind="rss"),
        "memory_soft_limit": dict(memory_limit=64 * 2**20, memory_soft_limit=128 * 2**20),
        "backoff_max": dict(backoff_initial=5, backoff_max=1),
        "max_restarts": dict(max_restarts=-1),
        "name": dict(name="bad\nname"),
        "ack_interval": dict(ack_interval=float("nan")),
    }
    for key, kw in bad.items():
        with pytest.raises(ConfigError, match=key):
            SupervisorConfig(run_dir=str(tmp_path), **kw).validate()


def test_specs_validation():
    t = lambda ctx: None  # noqa: E731
    validate_specs([WorkerSpec("a", t), WorkerSpec("b", t)])
    with pytest.raises(ConfigError, match="duplicate"):
        validate_specs([WorkerSpec("a", t), WorkerSpec("a", t)])
    with pytest.raises(ConfigError, match="callable"):
        validate_specs([WorkerSpec("a", "nope")])
    with pytest.raises(ConfigError, match="printable"):
        validate_specs([WorkerSpec("a\nb", t)])


# ------------------------------------------------------------------------------------ titles
def test_titles_format_and_clean():
    assert titles.supervisor_title("pool", "p", 7, 8) == "pool: supervisor [p] 7/8 ready"
    assert titles.supervisor_title("pool", "p", 7, 8, restarts=3, fatal=1) == \
        "pool: supervisor [p] 7/8 ready restarts=3 fatal=1"
    assert titles.worker_title("pool", "p", "room:lobby\njoined") == "pool: worker [p] room:lobby joined"


def test_nosetps_disables_titles(monkeypatch):
    monkeypatch.setenv("POOL_NOSETPS", "1")
    assert not titles.enabled()


# ------------------------------------------------------------------------------------ notify
@pytest.mark.parametrize("abstract", [False, True])
def test_notify_ready_status_watchdog(tmp_path, abstract):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"supt-notify-{os.getpid()}"
        sock.bind("\0" + name)
        addr = "@" + name
    else:
        addr = str(tmp_path / "notify")
        sock.bind(addr)
    sock.settimeout(2)
    clock = FakeClock()
    n = Notifier({"NOTIFY_SOCKET": addr, "WATCHDOG_USEC": "2000000"}, clock=clock)
    try:
        n.ready()
        n.ready()                        # only once
        n.status("1/2 ready")
        n.status("1/2 ready")            # unchanged: not resent
        n.watchdog()
        n.watchdog()                     # not due yet
        clock.advance(0.6)               # WATCHDOG_USEC / 4 = 0.5 s
        n.watchdog()
        got = [sock.recv(100).decode() for _ in range(4)]
        assert got == ["READY=1", "STATUS=1/2 ready", "WATCHDOG=1", "WATCHDOG=1"]
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.recv(100)
    finally:
        n.close()
        sock.close()


def test_notify_absent_or_for_another_pid_is_silent():
    assert not Notifier({}).enabled
    n = Notifier({"NOTIFY_SOCKET": "/nonexistent/x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert n.watchdog_interval is None
    assert n.send("READY=1") is False    # failure is swallowed (logged once)
    n.close()


def test_signal_names():
    assert reasons.signal_name(signal.SIGTERM) == "SIGTERM"
    assert reasons.describe_status(-signal.SIGABRT) == "killed by SIGABRT"
    assert json.dumps(reasons.describe_status(None))


# ------------------------------------------------------------------------------------ worker context
def _ctx(writer, lifeline_r, ppid=None):
    from supervisor.child import WorkerContext
    stop_r, stop_w = os.pipe2(os.O_NONBLOCK)
    return WorkerContext(slot="s", name="n", ack_interval=1.0, shutdown_timeout=1.0,
                         title_prefix="pool", writer=writer, stop_r=stop_r, stop_w=stop_w,
                         lifeline_r=lifeline_r, ppid=os.getppid() if ppid is None else ppid)


class _ListWriter:
    broken = False

    def __init__(self):
        self.sent = []

    def write(self, data):
        self.sent.append(ackmod.decode(data))


def test_context_lifeline_eof_means_parent_gone():
    r, w = os.pipe()
    ctx = _ctx(_ListWriter(), r)
    assert ctx.parent_alive()
    os.close(w)                                   # the supervisor's end closes when it dies
    assert not ctx.parent_alive()
    assert not _ctx(_ListWriter(), r, ppid=1).parent_alive()     # reparented
    os.close(r)


def test_context_stop_signal_handler_sets_flag_and_wakes_fd():
    import select
    r, w = os.pipe()
    ctx = _ctx(_ListWriter(), r)
    assert not ctx.stop_requested
    ctx._on_stop_signal(signal.SIGTERM, None)
    assert select.select(ctx.wait_fds(), [], [], 0)[0] == [ctx.wait_fds()[0]]
    assert ctx.stop_requested
    assert select.select(ctx.wait_fds(), [], [], 0)[0] == []     # drained: no busy loop
    os.close(r)
    os.close(w)


def test_context_ack_coalesces_and_refuses_threads():
    import threading
    r, w = os.pipe()
    writer = _ListWriter()
    ctx = _ctx(writer, r)
    assert not ctx.acked
    for _ in range(100):
        ctx.ack("joined", ready=True, heartbeat_age=0.5)
    assert len(writer.sent) == 1 and ctx.acked                  # identical acks coalesced
    ctx.ack("backoff", ready=False)                              # a change goes out at once
    assert [a.state for a in writer.sent] == ["joined", "backoff"]
    errors = []
    t = threading.Thread(target=lambda: errors.append(pytest.raises(RuntimeError, ctx.ack, "x")))
    t.start()
    t.join()
    assert errors and len(writer.sent) == 2                      # an ack must prove the loop turns
    os.close(r)
    os.close(w)


def test_memory_error_is_found_anywhere_in_the_chain():
    from supervisor.child import _is_memory_error
    try:
        try:
            raise MemoryError()
        except MemoryError as e:
            raise RuntimeError("wrapped by a callback wrapper") from e
    except RuntimeError as e:
        assert _is_memory_error(e)
    assert not _is_memory_error(ValueError("x"))
