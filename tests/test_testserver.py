"""The Phoenix test server and the stall listener, driven by websocket-client over real sockets."""
import base64
import json
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time

import pytest
import websocket
from websocket import ABNF, WebSocketBadStatusException, WebSocketTimeoutException

from pool.testserver import PhoenixServer, StallListener

pytestmark = pytest.mark.timeout(20)

FRAME_64K = "x" * 65536
CLIENT_DEAD = (ConnectionError, websocket.WebSocketConnectionClosedException)


@pytest.fixture
def clients():
    opened = []

    def connect(url, vsn="2.0.0", timeout=2, **kw):
        if vsn is not None:
            url += ("&" if "?" in url else "?") + "vsn=" + vsn
        ws = websocket.create_connection(url, timeout=timeout, **kw)
        opened.append(ws)
        return ws

    yield connect
    for ws in opened:
        ws.shutdown()


@pytest.fixture
def servers():
    started = []

    def make(**kw):
        srv = PhoenixServer(**kw).start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()


@pytest.fixture
def srv(servers):
    return servers()


@pytest.fixture
def ws(srv, clients):
    return clients(srv.url)


def send(ws, *msg):
    ws.send(json.dumps(list(msg)))


def recv(ws):
    return json.loads(ws.recv())


def reply(join_ref, ref, topic, response=None, status="ok"):
    return [join_ref, ref, topic, "phx_reply", {"status": status, "response": {} if response is None else response}]


def join(ws, topic, ref="1", payload=None):
    send(ws, ref, ref, topic, "phx_join", {} if payload is None else payload)
    return recv(ws)


def close_code(ws):
    opcode, frame = ws.recv_data_frame(True)
    assert opcode == ABNF.OPCODE_CLOSE
    return struct.unpack("!H", frame.data[:2])[0]


def fill_send_buffer(ws, limit=15.0):
    """Send 64 KiB frames until the client's send times out; returns (seconds, bytes sent)."""
    start, sent = time.monotonic(), 0
    with pytest.raises(WebSocketTimeoutException):
        while time.monotonic() - start < limit:
            ws.send(FRAME_64K)
            sent += len(FRAME_64K)
    return time.monotonic() - start, sent


# -- upgrade ---------------------------------------------------------------------------------

def test_upgrade_v2(srv, clients):
    ws = clients(srv.url + "?token=abc")
    assert srv.url == f"ws://127.0.0.1:{srv.port}/socket/websocket"
    [conn] = srv.connections
    assert (conn.vsn, conn.params, conn.auth_token, conn.upgraded) == ("2.0.0", {"token": "abc"}, None, True)
    send(ws, None, "1", "phoenix", "heartbeat", {})
    assert recv(ws) == reply(None, "1", "phoenix")
    assert srv.stats["connections"] == 1


def test_upgrade_v1_speaks_objects_without_join_ref(srv, clients):
    ws = clients(srv.url, vsn=None)
    assert srv.connections[0].vsn == "1.0.0"
    ws.send(json.dumps({"topic": "room:1", "event": "phx_join", "payload": {}, "ref": "1", "join_ref": "1"}))
    assert json.loads(ws.recv()) == {"topic": "room:1", "event": "phx_reply", "ref": "1",
                                     "payload": {"status": "ok", "response": {}}}
    ws.send(json.dumps({"topic": "room:1", "event": "echo", "payload": {"a": 1}, "ref": "2"}))
    assert json.loads(ws.recv())["payload"] == {"status": "ok", "response": {"a": 1}}
    assert srv.connections[0].joined == {"room:1": "1"}


@pytest.mark.parametrize("vsn", ["3.0.0", "2.0", "banana"])
def test_unknown_vsn_gets_403(srv, clients, vsn):
    with pytest.raises(WebSocketBadStatusException) as err:
        clients(srv.url, vsn=vsn)
    assert err.value.status_code == 403
    assert srv.stats["upgrades_rejected"] == 1


def test_connect_check_false_gets_403(servers, clients):
    seen = []

    def check(params, token):
        seen.append((params, token))
        return params.get("token") == "good"

    srv = servers(connect_check=check)
    clients(srv.url + "?token=good")
    with pytest.raises(WebSocketBadStatusException) as err:
        clients(srv.url + "?token=bad")
    assert err.value.status_code == 403
    assert seen == [({"token": "good"}, None), ({"token": "bad"}, None)]
    assert [c.upgraded for c in srv.all_connections] == [True, False]


def test_wrong_path_gets_404(srv, clients):
    with pytest.raises(WebSocketBadStatusException) as err:
        clients(f"ws://127.0.0.1:{srv.port}/socket")
    assert err.value.status_code == 404


def test_reject_upgrade_fault(srv, clients):
    srv.faults.reject_upgrade = 503
    with pytest.raises(WebSocketBadStatusException) as err:
        clients(srv.url)
    assert err.value.status_code == 503
    srv.reset_faults()
    clients(srv.url)
    assert srv.stats["upgrades_rejected"] == 1


def test_hang_upgrade_makes_the_client_time_out(srv, clients):
    srv.faults.hang_upgrade = True
    start = time.monotonic()
    with pytest.raises((WebSocketTimeoutException, TimeoutError)):
        clients(srv.url, timeout=0.5)
    assert time.monotonic() - start < 1.5
    assert srv.wait_connections(1)
    [conn] = srv.all_connections
    assert not conn.upgraded and conn.vsn == "2.0.0"


def test_auth_token_subprotocol(srv, clients):
    token = "s3cr3t?/+~é"
    b64 = base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")
    ws = clients(srv.url, subprotocols=["phoenix", "base64url.bearer.phx." + b64])
    assert ws.getsubprotocol() == "phoenix"
    assert srv.connections[0].auth_token == token


def test_wss_with_a_trustme_certificate(servers, clients):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    srv = servers(ssl_context=server_ctx)
    assert srv.url.startswith("wss://127.0.0.1:")
    ws = clients(srv.url, sslopt={"context": client_ctx})
    assert join(ws, "room:tls") == reply("1", "1", "room:tls")
    send(ws, "1", "2", "room:tls", "echo", {"big": "y" * 100_000})
    assert recv(ws)[4]["response"]["big"] == "y" * 100_000


# -- heartbeats --------------------------------------------------------------------------------

def test_drop_heartbeats(srv, ws):
    srv.faults.drop_heartbeats = True
    send(ws, None, "1", "phoenix", "heartbeat", {})
    assert join(ws, "room:1", ref="2") == reply("2", "2", "room:1")  # nothing came before it
    assert srv.stats["heartbeats"] == srv.stats["heartbeats_dropped"] == 1


def test_per_connection_fault_overrides_the_global_one(srv, ws):
    srv.faults.drop_heartbeats = True
    srv.connections[0].faults.drop_heartbeats = False
    send(ws, None, "1", "phoenix", "heartbeat", {})
    assert recv(ws) == reply(None, "1", "phoenix")


# -- joins -------------------------------------------------------------------------------------

def test_join_ok_with_response_and_non_object_payload(srv, ws):
    assert join(ws, "room:1", payload={"response": {"hello": 1}}) == reply("1", "1", "room:1", {"hello": 1})
    assert join(ws, "room:2", ref="2", payload="just a string") == reply("2", "2", "room:2")
    assert srv.connections[0].joined == {"room:1": "1", "room:2": "2"}
    assert srv.stats["joins"] == 2


def test_join_unmatched_topic(srv, ws):
    assert join(ws, "nope:1") == reply(None, "1", "nope:1", {"reason": "unmatched topic"}, "error")
    assert srv.connections[0].joined == {}
    assert srv.stats["joins_rejected"] == 1


def test_join_rejected_by_payload_and_by_fault(srv, ws):
    assert join(ws, "room:1", payload={"reject": "go away"}) == reply("1", "1", "room:1", {"reason": "go away"}, "error")
    srv.faults.reject_joins = True
    assert join(ws, "room:2", ref="2") == reply("2", "2", "room:2", {"reason": "join rejected"}, "error")
    assert srv.connections[0].joined == {}


def test_too_many_channels(servers, clients):
    srv = servers(max_channels=2)
    ws = clients(srv.url)
    join(ws, "room:1", ref="1")
    join(ws, "room:2", ref="2")
    assert join(ws, "room:3", ref="3") == reply("3", "3", "room:3", {"reason": "too many channels joined"}, "error")


def test_duplicate_join_replies_ok_then_closes_the_old_join_ref(srv, ws):
    join(ws, "room:dup", ref="24")
    send(ws, "25", "25", "room:dup", "phx_join", {})
    assert recv(ws) == reply("25", "25", "room:dup")
    assert recv(ws) == ["24", "24", "room:dup", "phx_close", {}]
    assert srv.connections[0].joined == {"room:dup": "25"}


def test_stale_join_ref_dropped_and_null_accepted(srv, ws):
    join(ws, "room:1")
    send(ws, "99", "2", "room:1", "echo", {"stale": True})
    send(ws, None, "3", "room:1", "echo", {"fresh": True})
    assert recv(ws) == reply("1", "3", "room:1", {"fresh": True})
    assert srv.stats["stale_dropped"] == 1


def test_push_to_a_topic_not_joined(srv, ws):
    send(ws, "1", "2", "room:x", "echo", {})
    assert recv(ws) == reply(None, "2", "room:x", {"reason": "unmatched topic"}, "error")


def test_leave(srv, ws):
    join(ws, "room:1", ref="5")
    send(ws, "5", "6", "room:1", "phx_leave", {})
    assert recv(ws) == reply("5", "6", "room:1")
    assert recv(ws) == ["5", "5", "room:1", "phx_close", {}]
    send(ws, "5", "7", "room:1", "phx_leave", {})  # not joined any more: a plain ok
    assert recv(ws) == reply("5", "7", "room:1")
    assert srv.connections[0].joined == {}
    assert srv.stats["leaves"] == 1


# -- channel events ----------------------------------------------------------------------------

@pytest.fixture
def joined(ws):
    assert join(ws, "room:1") == reply("1", "1", "room:1")
    return ws


def test_echo_error_and_unknown_events(joined):
    send(joined, "1", "2", "room:1", "echo", {"a": [1, 2]})
    assert recv(joined) == reply("1", "2", "room:1", {"a": [1, 2]})
    send(joined, "1", "3", "room:1", "error", {"why": "because"})
    assert recv(joined) == reply("1", "3", "room:1", {"why": "because"}, "error")
    send(joined, "1", "4", "room:1", "anything_else", "a string")
    assert recv(joined) == reply("1", "4", "room:1", "a string")


def test_noreply_never_replies(srv, joined):
    send(joined, "1", "2", "room:1", "noreply", {})
    send(joined, "1", "3", "room:1", "echo", {})
    assert recv(joined) == reply("1", "3", "room:1")
    assert srv.stats["pushes"] == 2


def test_slow_replies_later_without_blocking_the_reader(joined):
    start = time.monotonic()
    send(joined, "1", "2", "room:1", "slow", {"delay": 1.0})
    send(joined, "1", "3", "room:1", "echo", {})
    assert recv(joined) == reply("1", "3", "room:1")
    assert recv(joined) == reply("1", "2", "room:1", {"delay": 1.0})
    assert time.monotonic() - start >= 1.0


def test_broadcast_event_reaches_every_joined_connection(srv, clients, joined):
    other = clients(srv.url)
    join(other, "room:1", ref="7")
    bystander = clients(srv.url)
    join(bystander, "room:2")
    send(joined, "1", "2", "room:1", "broadcast", {"event": "news", "x": 1})
    assert recv(joined) == [None, None, "room:1", "news", {"event": "news", "x": 1}]
    assert recv(joined) == reply("1", "2", "room:1")
    assert recv(other) == [None, None, "room:1", "news", {"event": "news", "x": 1}]
    srv.broadcast("room:2", "hello", {"y": 2})
    assert recv(bystander) == [None, None, "room:2", "hello", {"y": 2}]


def test_crash_sends_phx_error_and_forgets_the_channel(srv, joined):
    send(joined, "1", "2", "room:1", "crash", {})
    assert recv(joined) == ["1", "1", "room:1", "phx_error", {"reason": "channel_crash"}]
    send(joined, "1", "3", "room:1", "echo", {})
    assert recv(joined) == reply(None, "3", "room:1", {"reason": "unmatched topic"}, "error")
    assert srv.connections[0].joined == {}


def test_stop_replies_then_closes_the_channel(srv, joined):
    send(joined, "1", "2", "room:1", "stop", {})
    assert recv(joined) == reply("1", "2", "room:1")
    assert recv(joined) == ["1", "1", "room:1", "phx_close", {}]
    assert srv.connections[0].joined == {}


def test_push_event_and_server_push(srv, joined):
    send(joined, "1", "2", "room:1", "push", {"event": "ping", "payload": {"n": 1}})
    assert recv(joined) == ["1", None, "room:1", "ping", {"n": 1}]
    assert recv(joined) == reply("1", "2", "room:1")
    conn = srv.connections[0]
    conn.push("room:1", "hello", {"a": 1})
    assert recv(joined) == ["1", None, "room:1", "hello", {"a": 1}]
    conn.push("room:1", "old", {}, join_ref="0")  # a stale push, for clients that must drop it
    assert recv(joined) == ["0", None, "room:1", "old", {}]


def test_garbage_event(joined):
    send(joined, "1", "2", "room:1", "garbage", {})
    assert recv(joined) == reply("1", "2", "room:1")
    with pytest.raises(ValueError):
        recv(joined)


def test_close_event_closes_with_the_given_code(srv, joined):
    send(joined, "1", "2", "room:1", "close", {"code": 4001})
    assert close_code(joined) == 4001
    assert srv.all_connections[0].wait_closed(2)


def test_abort_event_resets_the_connection(srv, joined):
    send(joined, "1", "2", "room:1", "abort", {})
    with pytest.raises(CLIENT_DEAD):
        joined.recv()


# -- server-side controls ----------------------------------------------------------------------

@pytest.mark.parametrize("kind, expected", [
    ("text", "this is not json {"), ("array", "[1,2,3]"), ("binary", b"\xff\xfe\x00garbage")])
def test_send_garbage(srv, ws, kind, expected):
    srv.connections[0].send_garbage(kind)
    assert ws.recv() == expected


def test_send_raw(srv, ws):
    srv.connections[0].send_raw('["x"]')
    srv.connections[0].send_raw(b"\x01\x02")
    assert ws.recv() == '["x"]'
    assert ws.recv() == b"\x01\x02"


def test_server_close(srv, ws):
    conn = srv.connections[0]
    conn.close(4000, "bye")
    assert close_code(ws) == 4000
    assert conn.wait_closed(2) and srv.connections == []
    assert srv.all_connections == [conn]


def test_server_abort_resets_the_client(srv, ws):
    srv.connections[0].abort()
    assert srv.connections == []
    with pytest.raises(CLIENT_DEAD):
        ws.recv()


def test_client_close_and_ping(srv, ws):
    ws.ping("hi")
    opcode, frame = ws.recv_data_frame(True)
    assert (opcode, frame.data) == (ABNF.OPCODE_PONG, b"hi")
    ws.close()
    assert srv.all_connections[0].wait_closed(2)


def test_stop_aborts_clients_and_is_idempotent(servers, clients):
    srv = servers()
    ws = clients(srv.url)
    join(ws, "room:1")
    srv.stop()
    srv.stop()
    with pytest.raises(CLIENT_DEAD):
        ws.recv()
    conn = srv.all_connections[0]
    assert conn.closed and not conn._thread.is_alive()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", srv.port), timeout=1)


def test_wait_for_and_received(srv, ws):
    assert not srv.wait_for(lambda: False, timeout=0.05)
    join(ws, "room:1")
    conn_id = srv.connections[0].id
    assert list(srv.received) == [(conn_id, {"join_ref": "1", "ref": "1", "topic": "room:1",
                                             "event": "phx_join", "payload": {}})]


# -- binary frames -----------------------------------------------------------------------------

def binary_push(join_ref, ref, topic, event, data):
    fields = [f.encode() for f in (join_ref, ref, topic, event)]
    return bytes([0] + [len(f) for f in fields]) + b"".join(fields) + data


def test_binary_push_and_reply_round_trip(srv, ws):
    topic = "room:é"  # lengths count UTF-8 bytes
    join(ws, topic)
    ws.send_binary(binary_push("1", "2", topic, "echo", b"\x00\x01payload"))
    opcode, data = ws.recv_data()
    assert opcode == ABNF.OPCODE_BINARY
    assert data == bytes([1, 1, 1, 7, 2]) + b"12" + topic.encode() + b"ok" + b"\x00\x01payload"
    assert srv.received[-1][1]["payload"] == b"\x00\x01payload"


def test_binary_push_and_broadcast_from_the_server(srv, ws):
    join(ws, "t")
    conn = srv.connections[0]
    conn.send_binary_push("t", "ev", b"\x00\xff")
    assert ws.recv() == bytes([0, 1, 1, 2]) + b"1tev\x00\xff"
    conn.send_binary_broadcast("t", "ev", b"\x01")
    assert ws.recv() == bytes([2, 1, 2]) + b"tev\x01"
    with pytest.raises(ValueError):
        conn.send_binary_push("t" * 256, "ev", b"")


# -- malformed input, idle timeout, stalls -------------------------------------------------------

@pytest.mark.parametrize("vsn, frame", [
    ("2.0.0", "not json"),
    ("2.0.0", '{"topic": "t", "event": "e", "payload": {}, "ref": "1"}'),
    ("2.0.0", "[null, \"1\", \"phoenix\"]"),
    ("2.0.0", "[null, 1, \"phoenix\", \"heartbeat\", {}]"),
    ("1.0.0", '[null, "1", "phoenix", "heartbeat", {}]'),
    ("2.0.0", b"\x07garbage"),
    ("2.0.0", b"\x00\x09\x01\x01\x01ab"),
    ("1.0.0", b"\x00\x00\x01\x01\x01abc"),
], ids=["not-json", "object-on-v2", "short-array", "numeric-ref", "array-on-v1",
        "bad-kind", "truncated", "binary-on-v1"])
def test_malformed_frame_closes_with_1011(srv, clients, vsn, frame):
    ws = clients(srv.url, vsn=vsn)
    if isinstance(frame, bytes):
        ws.send_binary(frame)
    else:
        ws.send(frame)
    assert close_code(ws) == 1011
    assert srv.stats["malformed"] == 1
    assert srv.all_connections[0].wait_closed(2)


def test_idle_timeout_closes_with_1000(servers, clients):
    srv = servers(idle_timeout=0.3)
    ws = clients(srv.url)
    start = time.monotonic()
    assert close_code(ws) == 1000
    assert 0.25 < time.monotonic() - start < 2
    assert srv.stats["closed_idle"] == 1


def test_stop_reading_keeps_the_data_and_resume_reads_it(srv, ws):
    conn = srv.connections[0]
    conn.stop_reading()
    send(ws, None, "1", "phoenix", "heartbeat", {})
    assert not srv.wait_for(lambda: srv.stats["heartbeats"], timeout=0.3)
    conn.resume_reading()
    assert recv(ws) == reply(None, "1", "phoenix")


def test_stop_reading_really_fills_the_client_send_buffer(srv, ws):
    srv.faults.stop_reading = True
    elapsed, sent = fill_send_buffer(ws)
    assert elapsed < 10
    assert sent < 64 * 2**20
    assert len(srv.received) == 0 and srv.stats["malformed"] == 0  # the server read none of it


def test_stall_listener(clients):
    with StallListener(joins=1) as stall:
        assert stall.url == f"ws://127.0.0.1:{stall.port}/socket/websocket"
        for n in (1, 2):  # a reconnecting client stalls again
            ws = clients(stall.url)
            send(ws, None, "1", "phoenix", "heartbeat", {})
            assert recv(ws) == reply(None, "1", "phoenix")
            assert join(ws, "room:1", ref="2") == reply("2", "2", "room:1")
            ws.settimeout(1)
            elapsed, _ = fill_send_buffer(ws)
            assert elapsed < 10
            assert stall.connections == n
        assert stall.wait_connections(2, timeout=0.1)
    with pytest.raises(CLIENT_DEAD):
        ws.recv()


def test_stall_listener_with_no_joins_stalls_right_after_the_upgrade(clients):
    with StallListener(joins=0) as stall:
        ws = clients(stall.url)
        ws.settimeout(0.5)
        fill_send_buffer(ws)


# -- command line ------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [[], ["--stall"]])
def test_main_runs_until_sigterm(clients, args):
    proc = subprocess.Popen([sys.executable, "-m", "pool.testserver", "--port", "0", *args],
                            stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("ws://127.0.0.1:") and url.endswith("/socket/websocket")
        ws = clients(url)
        assert join(ws, "room:1") == reply("1", "1", "room:1")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait()


def test_faults_object(srv, ws):
    conn = srv.connections[0]
    with pytest.raises(AttributeError):
        srv.faults.stop_reding = True
    conn.faults.reject_joins = True
    srv.faults.drop_heartbeats = True
    srv.reset_faults()
    assert (conn.faults.reject_joins, srv.faults.drop_heartbeats) == (None, False)
    assert join(ws, "room:1") == reply("1", "1", "room:1")


def test_a_send_that_times_out_aborts_the_connection(servers, clients):
    srv = servers(send_timeout=0.5)
    clients(srv.url)  # never reads
    conn = srv.connections[0]
    start = time.monotonic()
    while conn.push("t", "big", {"data": "z" * 2**20}):
        assert time.monotonic() - start < 10
    assert conn.closed and srv.connections == []


def test_descriptors_above_1024(srv, clients):
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1100:
        pytest.skip("cannot raise the descriptor limit above 1024")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1100), hard))
    filler = [socket.socket() for _ in range(1030)]
    try:
        ws = clients(srv.url)
        assert srv.connections[0]._sock.fileno() >= 1024
        assert join(ws, "room:1") == reply("1", "1", "room:1")
    finally:
        for s in filler:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
