"""Checklist items of ../shared/PROTOCOL.md that tests/test_protocol.py, test_socket.py and
test_worker.py left uncovered, plus regression tests for the bugs found while writing docs/
(bounds, memory and input validation).

docs/protocol.md maps every checklist ID to its test(s). Real sockets throughout: pool.Socket
or a spawned worker against pool.testserver.PhoenixServer / StallListener.
"""
import fcntl
import itertools
import os
import resource
import signal
import socket
import time

import pytest

from pool import ConnectFailed, ConnectionLost, JoinTimeout, PushTimeout, ReplyError, Socket
from pool import framing
from pool.backoff import FORBIDDEN_SCHEDULE, RECONNECT_SCHEDULE, REJOIN_SCHEDULE, Schedule
from pool.testserver import PhoenixServer, StallListener
from pool.worker import ChannelSpec
from conftest import check_buffered_pushes_go_out_in_order, wait_until, worker_settings
from rawpeers import _Peer

FAST = dict(heartbeat_interval=30, send_timeout=0.5, connect_timeout=0.5, push_timeout=0.5)


def joined_socket(url, *topics, **kw):
    sock = Socket(url, **{**FAST, **kw})
    sock.connect()
    for topic in topics or ("room:1",):
        sock.join(topic)
    return sock


def settings(url, run_dir, **kw):
    return worker_settings(url, run_dir, **{"heartbeat_interval": 30, **kw})


def received(server, event=None, conn_id=None):
    return [m for cid, m in server.received
            if (event is None or m["event"] == event) and (conn_id is None or cid == conn_id)]


def spawn(spawn_worker, s, channels):
    """spawn_worker; its socket file appears only once it listens (pool/service.py listen_unix)."""
    return spawn_worker(s, channels)


def rss_mib(pid):
    with open(f"/proc/{pid}/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# -- Socket (K*) -----------------------------------------------------------------------------

def test_K7_a_torn_down_connection_never_touches_the_new_one(server):
    sock = joined_socket(server.url)
    sock.abort()  # teardown of the first connection ...
    sock.connect()  # ... and a new one at once
    sock.join("room:1")
    first, second = server.all_connections
    assert first.wait_closed(1) and not second.closed
    assert sock.push("room:1", "echo", {"n": 1}) == {"n": 1}
    sock.close()
    sock.close()  # two overlapping disconnects both complete
    assert second.wait_closed(1)
    assert server.wait_for(lambda: not server.connections, 1), "a connection was left open"
    assert sock.connection_state() == "closed"


def test_K9_join_registers_the_channel_and_leave_unregisters_it(server):
    sock = joined_socket(server.url, "room:1", "room:2")
    states = {t: c.state for t, c in sock.channels.items()}
    assert states == {"room:1": "joined", "room:2": "joined"}
    sock.leave("room:1")
    assert list(sock.channels) == ["room:2"]
    server.connections[0].send_raw('[null,null,"room:1","late",{}]')
    assert sock.poll(0.3) == []  # nothing is routed to the removed channel any more
    assert sock.stats["unknown_dropped"] == 2  # the server's phx_close after the leave, and "late"


def test_K10_pushes_wait_in_the_buffer_while_disconnected_and_go_out_in_order(server, run_dir,
                                                                             spawn_worker):
    server.faults.reject_upgrade = 503
    w = spawn(spawn_worker, settings(server.url, run_dir), [ChannelSpec("room:1")])
    w.wait_state("backoff")
    check_buffered_pushes_go_out_in_order(
        server, w, lambda: setattr(server.faults, "reject_upgrade", None))


def test_K14_a_successful_connect_resets_the_reconnect_backoff(run_dir, spawn_worker):
    calls = itertools.count(1)
    # the first upgrade is refused (403), every later one accepted
    with PhoenixServer(connect_check=lambda params, token: next(calls) > 1) as srv:
        w = spawn(spawn_worker, settings(srv.url, run_dir, reconnect_schedule=(0.05, 5.0),
                                         forbidden_schedule=(0.05,)), [ChannelSpec("room:1")])
        w.wait_state("joined")
        assert srv.stats["upgrades_rejected"] == 1
        srv.connections[0].abort()
        # one failure before the open: without the reset, this reconnect would wait 5 s
        assert srv.wait_for(lambda: srv.stats["joins"] >= 2, 1.5)
        assert w.wait_state("joined")["stats"]["reconnects"] == 1


def test_K15_C8_backoff_schedules_are_phoenix_js_plus_jitter():
    assert RECONNECT_SCHEDULE == (0.01, 0.05, 0.1, 0.15, 0.2, 0.25, 0.5, 1.0, 2.0, 5.0)
    assert REJOIN_SCHEDULE == (1.0, 2.0, 5.0, 10.0)
    assert FORBIDDEN_SCHEDULE == (30.0, 60.0)
    for steps in (RECONNECT_SCHEDULE, REJOIN_SCHEDULE, FORBIDDEN_SCHEDULE):
        schedule = Schedule(steps)
        for attempt in range(1, len(steps) + 4):
            step = steps[min(attempt, len(steps)) - 1]  # the last step repeats
            assert step <= schedule.delay(attempt) <= step * 1.25
    with pytest.raises(ValueError):
        Schedule(())


def test_K16_transport_loss_does_not_revive_a_channel_the_server_closed(server, run_dir,
                                                                        spawn_worker):
    w = spawn(spawn_worker, settings(server.url, run_dir),
              [ChannelSpec("room:1"), ChannelSpec("room:2")])
    w.wait_state("joined")
    w.client.push("room:1", "stop", {})  # phx_close: room:1 is closed for good
    w.wait_state("degraded")
    server.connections[0].close(code=1001)
    assert server.wait_for(lambda: server.stats["joins"] >= 3)
    second = server.all_connections[1]
    info = w.wait_state("degraded")
    assert [m["topic"] for m in received(server, "phx_join", second.id)] == ["room:2"]
    states = {c["topic"]: c["state"] for c in info["channels"]}
    assert states == {"room:1": "closed", "room:2": "joined"}


def test_K16_transport_loss_leaves_a_leaving_channel_alone(server):
    sock = joined_socket(server.url, "room:1", "room:2")
    sock.send_leave("room:1")
    sock.abort()
    assert sock.channels["room:2"].state == "errored"
    assert sock.channels.get("room:1") is None or sock.channels["room:1"].state == "leaving"


def test_K18_messages_read_together_with_a_reply_are_not_lost(server):
    sock = joined_socket(server.url)  # the join used ref "1": the next ref is "2"
    conn = server.connections[0]
    # the reply for ref "2" and a broadcast are already waiting when push() reads them
    conn.send_raw('["1","2","room:1","phx_reply",{"status":"ok","response":{"early":true}}]')
    conn.send_raw('[null,null,"room:1","new",{"x":1}]')
    time.sleep(0.1)  # let both frames reach the client's receive buffer (nothing to wait_for)
    assert sock.push("room:1", "noreply", {}) == {"early": True}
    assert [(m.event, m.payload) for m in sock.poll(0.3)] == [("new", {"x": 1})]


# -- Channel (C*) ----------------------------------------------------------------------------

def test_C1_join_params_are_sent_and_the_join_timeout_defaults_to_push_timeout(server):
    sock = joined_socket(server.url)
    sock.join("room:2", {"user": "u1", "n": [1, 2]})
    assert received(server, "phx_join")[-1]["payload"] == {"user": "u1", "n": [1, 2]}
    with StallListener(joins=0) as stall:  # joins are never answered
        sock = Socket(stall.url, **{**FAST, "push_timeout": 0.3})
        start = time.monotonic()
        with pytest.raises(JoinTimeout):
            sock.join("room:1")  # join() connects on its own, too
        assert 0.28 <= time.monotonic() - start < 0.8


def test_C1_callable_join_params_are_evaluated_at_each_join(server):
    counter = itertools.count(1)
    sock = Socket(server.url, **FAST)
    sock.connect()
    sock.join("room:1", lambda: {"n": next(counter)})
    sock.join("room:1", lambda: {"n": next(counter)})
    assert [m["payload"] for m in received(server, "phx_join")] == [{"n": 1}, {"n": 2}]


def test_C2_send_join_is_joining_until_the_ok_reply(server):
    sock = Socket(server.url, **FAST)
    sock.connect()
    join_ref = sock.send_join("room:1", {})
    assert sock.channels["room:1"].state == "joining"  # replies are read only by poll()
    msgs = []
    deadline = time.monotonic() + 1
    while not msgs and time.monotonic() < deadline:
        msgs = sock.poll(0.1)
    assert [(m.event, m.ref, m.status) for m in msgs] == [("phx_reply", join_ref, "ok")]
    assert sock.channels["room:1"].state == "joined"


def test_C4_C6_socket_join_timeout_sends_leave_with_the_join_ref_and_ignores_the_late_ok(server):
    sock = joined_socket(server.url, "room:0")  # an answered join: no leave follows it
    server.faults.stop_reading = True
    with pytest.raises(JoinTimeout):
        sock.join("room:1", timeout=0.2)
    assert "room:1" not in sock.channels
    server.faults.stop_reading = False
    assert server.wait_for(lambda: server.stats["leaves"] == 1, 1)
    join = received(server, "phx_join")[-1]
    leaves = received(server, "phx_leave")
    assert [(m["topic"], m["join_ref"]) for m in leaves] == [("room:1", join["ref"])]
    assert join["join_ref"] == join["ref"]
    deadline = time.monotonic() + 1
    while sock.stats["unknown_dropped"] < 3 and time.monotonic() < deadline:
        assert sock.poll(0.05) == []  # the late ok, the leave's ok, the phx_close: all dropped
    assert sock.stats["unknown_dropped"] == 3 and "room:1" not in sock.channels
    assert sock.channels["room:0"].state == "joined"


def test_C4_C6_worker_join_timeout_sends_leave_then_rejoins(server, run_dir, spawn_worker):
    server.faults.stop_reading = True  # the upgrade completes, then nothing is read
    w = spawn(spawn_worker, settings(server.url, run_dir, join_timeout=0.2,
                                     rejoin_schedule=(0.05,)), [ChannelSpec("room:1")])
    assert wait_until(lambda: w.info()["stats"]["rejoins"] >= 1, 1.5)
    assert w.info()["channels"][0]["last_error"] == "join timeout"
    server.faults.stop_reading = False
    info = w.wait_state("joined", timeout=1.5)
    first_join = received(server, "phx_join")[0]
    first_leave = received(server, "phx_leave")[0]
    assert first_leave["join_ref"] == first_join["ref"]
    # the late replies and phx_close of the abandoned joins are stale, never mistaken for current
    assert info["socket"]["stale_dropped"] >= 1 and info["channels"][0]["state"] == "joined"


def test_C5_a_successful_join_resets_the_rejoin_backoff(server, run_dir, spawn_worker):
    w = spawn(spawn_worker, settings(server.url, run_dir, rejoin_schedule=(0.05, 5.0)),
              [ChannelSpec("room:1")])
    w.wait_state("joined")
    for joins in (2, 3):
        with pytest.raises(PushTimeout):
            w.client.push("room:1", "crash", {}, timeout=0.1)  # phx_error, no reply
        # the second crash would wait 5 s if the first rejoin had not reset the counter
        assert server.wait_for(lambda: server.stats["joins"] >= joins, 1)
        w.wait_state("joined", timeout=1)
    assert w.info()["stats"]["rejoins"] == 2


def test_C8_X3_a_phoenix_1_7_phx_error_without_reason_rejoins_and_survives_the_stale_close(
        server, run_dir, spawn_worker):
    w = spawn(spawn_worker, settings(server.url, run_dir), [ChannelSpec("room:1")])
    w.wait_state("joined")
    conn = server.connections[0]
    join_ref = conn.joined["room:1"]
    # Phoenix 1.7: payload {} and join_ref = ref = the channel's join_ref. The test server still
    # holds the channel, so the rejoin is a duplicate join: ok for the new one, then a phx_close
    # tagged with the old join_ref, which must not close the new channel.
    conn.send_raw(f'["{join_ref}","{join_ref}","room:1","phx_error",{{}}]')
    assert server.wait_for(lambda: server.stats["joins"] >= 2, 1)
    assert w.client.push("room:1", "echo", {"n": 1}) == {"n": 1}
    info = w.wait_state("joined")
    assert info["stats"]["rejoins"] == 1 and info["socket"]["stale_dropped"] == 1
    assert info["channels"][0]["state"] == "joined"


def test_C13_default_push_timeout_and_no_late_timeout_after_ok(server, run_dir, spawn_worker):
    sock = joined_socket(server.url, push_timeout=0.2)
    start = time.monotonic()
    with pytest.raises(PushTimeout):
        sock.push("room:1", "noreply", {})  # no per-push timeout: push_timeout applies
    assert 0.18 <= time.monotonic() - start < 0.6
    w = spawn(spawn_worker, settings(server.url, run_dir), [ChannelSpec("room:1")])
    w.wait_state("joined")
    assert w.client.push("room:1", "echo", {"a": 1}, timeout=0.2) == {"a": 1}
    time.sleep(0.35)  # past the push's deadline: an answered push must not time out as well
    info = w.info()
    assert (info["stats"]["replies_ok"], info["stats"]["timeouts"]) == (1, 0)
    assert (info["inflight"], info["buffered"]) == (0, 0)


def test_C14_leave_closes_locally_on_timeout_and_at_once_when_disconnected(server):
    sock = joined_socket(server.url, "room:1", "room:2")
    server.faults.stop_reading = True
    start = time.monotonic()
    sock.leave("room:1", timeout=0.2)
    assert 0.18 <= time.monotonic() - start < 0.6
    assert list(sock.channels) == ["room:2"]
    server.faults.stop_reading = False
    assert server.wait_for(lambda: server.stats["leaves"] == 1, 1)  # it did reach the server
    sock.abort()
    start = time.monotonic()
    sock.leave("room:2")
    assert time.monotonic() - start < 0.05 and sock.channels == {}


# -- Server rules (X*) ----------------------------------------------------------------------

def test_X5_unjoined_pushes_get_unmatched_topic_and_the_channel_limit_is_an_error_reply():
    with PhoenixServer(max_channels=2) as srv:
        sock = joined_socket(srv.url, "room:1", "room:2")
        with pytest.raises(ReplyError) as info:
            sock.join("room:3")
        assert info.value.response == {"reason": "too many channels joined"}
        assert "room:3" not in sock.channels
        ref = sock.send_message("room:9", "echo", {})  # send_push would refuse: not joined
        msgs = []
        deadline = time.monotonic() + 1
        while not msgs and time.monotonic() < deadline:
            msgs = sock.poll(0.1)
        assert [(m.ref, m.join_ref, m.status, m.response) for m in msgs] == \
            [(ref, None, "error", {"reason": "unmatched topic"})]


def test_X1_X3_v1_duplicate_join_keeps_the_new_channel(server):
    sock = joined_socket(server.url, vsn="1.0.0")
    sock.join("room:1")
    sock.poll(0.3)
    assert sock.channels["room:1"].state == "joined"


# -- protocol rule 4: Origin ------------------------------------------------------------------

class HeadCapture(_Peer):
    """Records each HTTP upgrade request head and answers 403 (nothing else)."""

    def __init__(self):
        super().__init__()
        self.heads = []

    def _serve(self, conn):
        with conn:
            conn.settimeout(1)
            data = b""
            try:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                self.heads.append(data.decode("latin-1").lower())
                conn.sendall(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
            except OSError:
                pass


def test_rule4_no_origin_header_unless_asked():
    with HeadCapture() as peer:
        for origin in (None, "https://app.example"):
            with pytest.raises(ConnectFailed) as info:
                Socket(peer.url, origin=origin, **FAST).connect()
            assert info.value.status == 403
        plain, with_origin = peer.heads
    assert "\r\norigin:" not in plain
    assert "\r\norigin: https://app.example\r\n" in with_origin


# -- bugs found while documenting (bounds and memory) ---------------------------------------

def test_bound_connect_keeps_the_callers_interval_timer(server):
    previous = signal.signal(signal.SIGALRM, lambda *a: None)
    try:
        signal.setitimer(signal.ITIMER_REAL, 30)
        Socket(server.url, **FAST).connect()
        assert signal.getitimer(signal.ITIMER_REAL)[0] > 25
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_bound_a_socket_with_a_descriptor_above_1024_works(server, monkeypatch):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        pytest.skip("RLIMIT_NOFILE below 1200")
    plain = socket.create_connection

    def high_fd_connection(*args, **kw):  # as in a process that already has 1100 files open
        sock = plain(*args, **kw)
        fd = fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD_CLOEXEC, 1100)
        high = socket.socket(sock.family, sock.type, sock.proto, fileno=fd)
        high.settimeout(sock.gettimeout())
        sock.close()
        return high
    monkeypatch.setattr(socket, "create_connection", high_fd_connection)
    sock = Socket(server.url, **FAST)
    sock.connect()
    assert sock.fileno() >= 1100
    sock.join("room:1")
    assert sock.push("room:1", "echo", {"n": 1}) == {"n": 1}


def test_bound_max_message_size_applies_to_a_single_frame(server):
    sock = joined_socket(server.url, max_message_size=64 * 1024)
    server.connections[0].send_raw('[null,null,"room:1","big",{"pad":"%s"}]' % ("x" * 256 * 1024))
    with pytest.raises(ConnectionLost, match="max_message_size"):
        deadline = time.monotonic() + 1
        while time.monotonic() < deadline:
            sock.poll(0.1)


def test_memory_answered_pushes_are_not_kept_until_their_timeout(server, run_dir, spawn_worker):
    w = spawn(spawn_worker, settings(server.url, run_dir), [ChannelSpec("room:1")])
    w.wait_state("joined")
    body = '{"pad":"%s"}' % ("x" * 2**20)
    w.client.push("room:1", "push", payload_json=body, timeout=3600)  # warm-up
    before = rss_mib(w.proc.pid)
    for _ in range(24):  # "push": the server replies {} and pushes {} back, so little comes back
        assert w.client.push("room:1", "push", payload_json=body, timeout=3600) == {}
    assert rss_mib(w.proc.pid) - before < 8, "the answered pushes' bodies are still held"


def test_memory_expired_buffered_pushes_do_not_pile_up_while_unjoined(server, run_dir,
                                                                      spawn_worker):
    server.faults.reject_joins = True
    w = spawn(spawn_worker, settings(server.url, run_dir, push_buffer=2), [ChannelSpec("room:1")])
    assert server.wait_for(lambda: server.stats["joins_rejected"] >= 1)
    body = '{"pad":"%s"}' % ("x" * 2**20)
    with pytest.raises(PushTimeout):
        w.client.push("room:1", "e", payload_json=body, timeout=0.02)  # warm-up
    before = rss_mib(w.proc.pid)
    for _ in range(24):
        with pytest.raises(PushTimeout, match="not sent"):
            w.client.push("room:1", "e", payload_json=body, timeout=0.02)
    assert w.info()["buffered"] == 0
    assert rss_mib(w.proc.pid) - before < 8, "the expired pushes' bodies are still held"


def test_state_a_reconnected_worker_with_only_closed_channels_is_degraded(server, run_dir,
                                                                          spawn_worker):
    w = spawn(spawn_worker, settings(server.url, run_dir), [ChannelSpec("room:1")])
    w.wait_state("joined")
    w.client.push("room:1", "stop", {})
    w.wait_state("degraded")
    server.connections[0].abort()
    assert server.wait_for(lambda: len(server.connections) == 1 and server.connections[0].upgraded
                           and len(server.all_connections) == 2, 1)
    w.wait_state("degraded", timeout=0.5)


def _raw_push(path, header, body):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    sock.sendall(framing.encode(header, body))
    return sock


def test_worker_input_a_nan_timeout_is_refused(server, run_dir, spawn_worker):
    w = spawn(spawn_worker, settings(server.url, run_dir), [ChannelSpec("room:1")])
    w.wait_state("joined")
    raw = _raw_push(w.path, {"op": "push", "id": 1, "topic": "room:1", "event": "noreply",
                             "timeout": float("nan")}, b"{}")
    try:
        head, _ = framing.recv_frame(raw, framing.Reader(), time.monotonic() + 0.5)
    except socket.timeout:
        head = None
    finally:
        raw.close()
    assert head is not None and head["op"] == "error"


def test_worker_input_a_body_that_is_not_utf8_is_refused_and_the_worker_lives(server, run_dir,
                                                                             spawn_worker):
    w = spawn(spawn_worker, settings(server.url, run_dir), [ChannelSpec("room:1")])
    pid = w.wait_state("joined")["pid"]
    raw = _raw_push(w.path, {"op": "push", "id": 1, "topic": "room:1", "event": "echo",
                             "timeout": 1}, b"\xff\xfe")
    try:
        got = framing.recv_frame(raw, framing.Reader(), time.monotonic() + 1)
    finally:
        raw.close()
    assert got is not None and got[0]["op"] in ("outcome", "error")
    assert got[0].get("outcome") != "ok"
    assert w.info()["pid"] == pid


@pytest.mark.parametrize("body", [
    "[1]".encode("utf-16"),            # UTF-16 with a byte-order mark
    b"\xef\xbb\xbf{}",                  # UTF-8 with a byte-order mark
    b'{"x": NaN}', b"Infinity", b"\xff\xfe", b"{not json",
])
def test_worker_input_only_strict_utf8_json_bodies_are_relayed(server, run_dir, spawn_worker, body):
    w = spawn(spawn_worker, settings(server.url, run_dir), [ChannelSpec("room:1")])
    pid = w.wait_state("joined")["pid"]
    raw = _raw_push(w.path, {"op": "push", "id": 1, "topic": "room:1", "event": "echo",
                             "timeout": 1}, body)
    try:
        head, _ = framing.recv_frame(raw, framing.Reader(), time.monotonic() + 2)
    finally:
        raw.close()
    assert head["op"] == "error" and "not UTF-8 JSON" in head["error"]
    assert w.info()["pid"] == pid
    assert not received(server, "echo")
