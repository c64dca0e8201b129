"""pool.Socket against the project's Phoenix test server and raw fault peers.

Bounds (DESIGN.md rule 1) and the socket/channel items of PROTOCOL.md's checklist; each test
that covers a checklist item names its ID.
"""
import ssl
import time

import pytest
import trustme

from pool import (ConnectFailed, ConnectionLost, ConnectTimeout, JoinTimeout, NotJoined,
                  PushTimeout, ReplyError, SendTimeout, Socket)
from pool.testserver import PhoenixServer, StallListener
from rawpeers import DripUpgradePeer, SlowDrainPeer

FAST = dict(heartbeat_interval=0.2, send_timeout=0.5, connect_timeout=0.5, push_timeout=0.5)


def joined_socket(url, topic="room:1", **kw):
    sock = Socket(url, **{**FAST, **kw})
    sock.connect()
    sock.join(topic)
    return sock


# -- bounds --------------------------------------------------------------------------

def test_stalled_peer_ends_a_push_stream_within_send_timeout(stall):
    sock = joined_socket(stall.url, send_timeout=0.5, heartbeat_interval=30)
    start = time.monotonic()
    with pytest.raises(SendTimeout):
        while time.monotonic() - start < 10:
            sock.send_push("room:1", "echo", {"blob": "x" * 16384})
    blocked = time.monotonic() - start
    # the buffers fill in milliseconds; then one send may wait send_timeout and no more
    assert blocked < 0.5 + 0.5, f"gave up only after {blocked:.2f}s"
    assert not sock.connected and sock.connection_state() == "closed"


def test_stalled_peer_with_heartbeats_only_is_detected_by_the_heartbeat_deadline(stall):
    sock = joined_socket(stall.url, heartbeat_interval=0.2, heartbeat_timeout=0.3)
    start = time.monotonic()
    with pytest.raises(ConnectionLost, match="heartbeat timeout"):
        while time.monotonic() - start < 5:
            sock.poll(0.1)
    # first heartbeat at 0.2 s, its reply due by 0.5 s
    assert 0.45 <= time.monotonic() - start < 1.2


def test_slow_draining_peer_cannot_stretch_one_send_past_send_timeout():
    with SlowDrainPeer(chunk=256, interval=0.02) as peer:
        sock = Socket(peer.url, send_timeout=0.6, connect_timeout=1, heartbeat_interval=30)
        sock.connect()
        start = time.monotonic()
        with pytest.raises(SendTimeout):
            sock.send_message("room:1", "big", {"blob": "x" * 4_000_000})
        elapsed = time.monotonic() - start
        assert peer.received > 0, "the peer drained nothing: this did not test a slow drain"
        assert 0.55 <= elapsed < 0.6 + 0.4, f"one send took {elapsed:.2f}s"


def test_hung_upgrade_raises_connect_timeout_on_time(server):
    server.faults.hang_upgrade = True
    sock = Socket(server.url, connect_timeout=0.5)
    start = time.monotonic()
    with pytest.raises(ConnectTimeout):
        sock.connect()
    assert 0.45 <= time.monotonic() - start < 1.0


def test_dripped_upgrade_is_bounded_in_total_not_per_read():
    with DripUpgradePeer(interval=0.05) as peer:  # each byte arrives quickly; the whole takes ~15 s
        sock = Socket(peer.url, connect_timeout=0.6)
        start = time.monotonic()
        with pytest.raises(ConnectTimeout):
            sock.connect()
        assert time.monotonic() - start < 0.6 + 0.4


@pytest.fixture(scope="module")
def tls():
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    return server_ctx, client_ctx


def test_wss_round_trip_and_hung_upgrade_over_tls(tls):
    server_ctx, client_ctx = tls
    with PhoenixServer(ssl_context=server_ctx) as srv:
        assert srv.url.startswith("wss://")
        sock = joined_socket(srv.url, sslopt={"context": client_ctx})
        assert sock.push("room:1", "echo", {"n": 1}) == {"n": 1}
        sock.close()
        srv.faults.hang_upgrade = True
        sock = Socket(srv.url, connect_timeout=0.5, sslopt={"context": client_ctx})
        start = time.monotonic()
        with pytest.raises(ConnectTimeout):
            sock.connect()
        assert time.monotonic() - start < 1.0


def test_wss_untrusted_certificate_fails_clearly(tls):
    server_ctx, _ = tls
    with PhoenixServer(ssl_context=server_ctx) as srv:
        with pytest.raises(ConnectFailed, match="CERTIFICATE|certificate"):
            Socket(srv.url, connect_timeout=1).connect()


def test_connection_refused_is_connect_failed():
    listener = StallListener().start()
    url = listener.url
    listener.stop()
    with pytest.raises(ConnectFailed) as info:
        Socket(url, connect_timeout=0.5).connect()
    assert info.value.status is None and not isinstance(info.value, ConnectTimeout)


def test_send_timeout_socket_is_never_reused(stall):
    sock = joined_socket(stall.url, heartbeat_interval=30)
    with pytest.raises(SendTimeout):
        for _ in range(10_000):
            sock.send_push("room:1", "echo", {"blob": "x" * 16384})
    with pytest.raises(ConnectionLost):
        sock.send_message("room:1", "echo", {})
    with pytest.raises(NotJoined):
        sock.send_push("room:1", "echo", {})


# -- socket conformance --------------------------------------------------------------

def test_K1_defaults_and_overrides():
    sock = Socket("ws://127.0.0.1:1/socket")
    assert (sock.heartbeat_interval, sock.heartbeat_timeout, sock.send_timeout,
            sock.connect_timeout, sock.push_timeout, sock.vsn) == (25.0, 25.0, 10.0, 10.0, 10.0, "2.0.0")
    assert sock.channels == {} and sock.connection_state() == "closed"
    sock = Socket("ws://127.0.0.1:1/socket", heartbeat_interval=3, heartbeat_timeout=1, push_timeout=2)
    assert (sock.heartbeat_interval, sock.heartbeat_timeout, sock.push_timeout) == (3, 1, 2)
    for bad in ({"send_timeout": 0}, {"connect_timeout": -1}, {"heartbeat_interval": "x"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Socket("ws://127.0.0.1:1/socket", **bad)


def test_K1_K2_params_literal_or_callable_reach_the_server_with_vsn(server):
    calls = []

    def params():
        calls.append(1)
        return {"user": str(len(calls))}
    sock = Socket(server.url, params=params, **FAST)
    sock.connect()
    sock.abort()
    sock.connect()
    assert [c.params for c in server.all_connections] == [{"user": "1"}, {"user": "2"}]
    assert all(c.vsn == "2.0.0" for c in server.all_connections)
    Socket(server.url, params={"a": "b"}, **FAST).connect()
    assert server.all_connections[-1].params == {"a": "b"}


def test_K3_connect_is_idempotent(server):
    sock = Socket(server.url, **FAST)
    sock.connect()
    sock.connect()
    assert server.wait_connections(1)
    time.sleep(0.05)
    assert len(server.all_connections) == 1


def test_K4_auth_token_subprotocol_and_callable_token_per_reconnect(server):
    tokens = iter(["first", "second"])
    sock = Socket(server.url, auth_token=lambda: next(tokens), **FAST)
    sock.connect()
    sock.abort()
    sock.connect()
    assert [c.auth_token for c in server.all_connections] == ["first", "second"]


def test_K6_K8_close_is_clean_and_safe_when_not_connected(server):
    sock = Socket(server.url, **FAST)
    sock.close()  # no connection: no error
    sock.connect()
    assert sock.connection_state() == "open"
    sock.close()
    assert sock.connection_state() == "closed"
    assert server.all_connections[0].wait_closed(2)
    sock.close()


def test_K12_heartbeat_frame_sent_and_reply_matched_by_ref(server):
    sock = joined_socket(server.url, heartbeat_interval=0.1)
    deadline = time.monotonic() + 1
    while sock.stats["heartbeat_replies"] < 3 and time.monotonic() < deadline:
        sock.poll(0.05)
    beats = [m for _, m in server.received if m["event"] == "heartbeat"]
    assert len(beats) >= 3
    assert all(m["topic"] == "phoenix" and m["join_ref"] is None and m["payload"] == {} for m in beats)
    assert len({m["ref"] for m in beats}) == len(beats)
    assert sock.heartbeat_age() < 0.5


def test_K12_missed_heartbeat_closes_at_the_deadline_not_before(server):
    server.faults.drop_heartbeats = True
    sock = joined_socket(server.url, heartbeat_interval=0.2, heartbeat_timeout=0.4)
    start = time.monotonic()
    with pytest.raises(ConnectionLost, match="heartbeat timeout"):
        while True:
            sock.poll(0.05)
            assert time.monotonic() - start < 3
    assert 0.55 <= time.monotonic() - start < 1.2
    assert sock.channels["room:1"].state == "errored"  # K16: channels error with the transport


def test_K13_no_heartbeat_after_close(server):
    sock = joined_socket(server.url, heartbeat_interval=0.05)
    sock.poll(0.12)
    sock.close()
    count = server.stats["heartbeats"]
    time.sleep(0.2)
    assert server.stats["heartbeats"] == count


def test_K18_messages_reach_only_their_topic(server):
    sock = joined_socket(server.url)
    server.connections[0].send_raw('[null,null,"room:other","new",{"x":1}]')
    server.broadcast("room:1", "new", {"x": 2})
    msgs = []
    deadline = time.monotonic() + 2
    while not msgs and time.monotonic() < deadline:
        msgs = sock.poll(0.1)
    assert [(m.topic, m.event, m.payload, m.join_ref) for m in msgs] == [("room:1", "new", {"x": 2}, None)]
    assert sock.stats["unknown_dropped"] == 1


def test_K19_ping_reports_rtt(server):
    sock = Socket(server.url, **FAST)
    assert sock.ping() is None
    sock.connect()
    rtt = sock.ping(timeout=1)
    assert 0 < rtt < 1


def test_K20_v1_objects_on_request(server):
    sock = joined_socket(server.url, vsn="1.0.0")
    assert server.all_connections[0].vsn == "1.0.0"
    assert sock.push("room:1", "echo", {"v": 1}) == {"v": 1}


def test_C2_join_message_carries_ref_as_join_ref(server):
    sock = joined_socket(server.url, topic="room:c2")
    join = [m for _, m in server.received if m["event"] == "phx_join"][0]
    assert join["topic"] == "room:c2" and join["join_ref"] == join["ref"] is not None
    assert sock.channels["room:c2"].join_ref == join["ref"]


def test_C4_join_timeout_sends_leave():
    with StallListener(joins=0) as listener:  # upgrade done, joins never answered
        sock = Socket(listener.url, **FAST)
        sock.connect()
        start = time.monotonic()
        with pytest.raises(JoinTimeout):
            sock.join("room:1", timeout=0.3)
        assert 0.25 < time.monotonic() - start < 1.0
        assert "room:1" not in sock.channels


def test_C7_X5_join_errors_raise_reply_error(server):
    sock = Socket(server.url, **FAST)
    sock.connect()
    with pytest.raises(ReplyError) as info:
        sock.join("room:1", {"reject": "not allowed"})
    assert info.value.response == {"reason": "not allowed"}
    with pytest.raises(ReplyError) as info:
        sock.join("nope:1")
    assert info.value.response == {"reason": "unmatched topic"}
    assert sock.channels == {}


def test_C11_C13_push_needs_a_joined_channel_and_carries_join_ref(server):
    sock = Socket(server.url, **FAST)
    sock.connect()
    with pytest.raises(NotJoined):
        sock.push("room:1", "echo", {})
    sock.join("room:1")
    assert sock.push("room:1", "echo", {"a": 1}) == {"a": 1}
    push = [m for _, m in server.received if m["event"] == "echo"][0]
    assert push["join_ref"] == sock.channels["room:1"].join_ref


def test_C13_push_timeout_and_error_reply(server):
    sock = joined_socket(server.url)
    start = time.monotonic()
    with pytest.raises(PushTimeout):
        sock.push("room:1", "noreply", {}, timeout=0.2)
    assert time.monotonic() - start < 0.6
    with pytest.raises(ReplyError) as info:
        sock.push("room:1", "error", {"why": "bad"})
    assert info.value.response == {"why": "bad"}


def test_C14_leave_sends_join_ref_and_closes_locally(server):
    sock = joined_socket(server.url)
    sock.join("room:2")
    join_ref = sock.channels["room:1"].join_ref
    sock.leave("room:1")
    leave = [m for _, m in server.received if m["event"] == "phx_leave"][0]
    assert leave["join_ref"] == join_ref and leave["payload"] == {}
    assert list(sock.channels) == ["room:2"]


def test_C8_X4_phx_error_marks_the_channel_errored(server):
    sock = joined_socket(server.url)
    sock.send_push("room:1", "crash", {})
    msgs = []
    deadline = time.monotonic() + 2
    while not msgs and time.monotonic() < deadline:
        msgs = sock.poll(0.1)
    assert [(m.event, m.payload) for m in msgs] == [("phx_error", {"reason": "channel_crash"})]
    assert sock.channels["room:1"].state == "errored"


def test_C9_phx_close_removes_the_channel(server):
    sock = joined_socket(server.url)
    sock.push("room:1", "stop", {})
    deadline = time.monotonic() + 2
    while "room:1" in sock.channels and time.monotonic() < deadline:
        sock.poll(0.05)
    assert "room:1" not in sock.channels


def test_X1_stale_join_ref_is_dropped(server):
    sock = joined_socket(server.url)
    conn = server.connections[0]
    conn.send_raw('["999",null,"room:1","old",{}]')
    conn.send_raw(f'["{sock.channels["room:1"].join_ref}",null,"room:1","current",{{}}]')
    msgs = []
    deadline = time.monotonic() + 2
    while not msgs and time.monotonic() < deadline:
        msgs = sock.poll(0.1)
    assert [m.event for m in msgs] == ["current"]
    assert sock.stats["stale_dropped"] == 1


def test_X3_duplicate_join_keeps_the_new_channel(server):
    sock = joined_socket(server.url)
    old = sock.channels["room:1"].join_ref
    sock.join("room:1")  # server: ok for the new join, then phx_close tagged with the old join_ref
    assert server.wait_for(lambda: any(m["event"] == "phx_join" for _, m in list(server.received)[1:]))
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        sock.poll(0.05)
    assert sock.channels["room:1"].state == "joined" and sock.channels["room:1"].join_ref != old
    assert sock.stats["stale_dropped"] >= 1
    assert sock.push("room:1", "echo", {"still": "joined"}) == {"still": "joined"}


def test_X6_rejected_upgrade_is_connect_failed_with_status(server):
    server.faults.reject_upgrade = 403
    with pytest.raises(ConnectFailed) as info:
        Socket(server.url, **FAST).connect()
    assert info.value.status == 403 and not isinstance(info.value, ConnectTimeout)
    server.faults.reject_upgrade = None
    with PhoenixServer(connect_check=lambda params, token: params.get("token") == "good") as srv:
        with pytest.raises(ConnectFailed) as info:  # connect/3 returned :error
            Socket(srv.url, params={"token": "bad"}, **FAST).connect()
        assert info.value.status == 403
        Socket(srv.url, params={"token": "good"}, **FAST).connect()


def test_X7_heartbeats_keep_an_idle_connection_open():
    with PhoenixServer(idle_timeout=0.4) as srv:
        sock = joined_socket(srv.url, heartbeat_interval=0.1)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            sock.poll(0.05)
        assert sock.connected and srv.stats["closed_idle"] == 0


@pytest.mark.parametrize("how", ["close_1000", "close_1001", "abort"])
def test_X8_K15_server_closes_surface_as_connection_lost(server, how):
    sock = joined_socket(server.url)
    conn = server.connections[0]
    if how == "abort":
        conn.abort()
    else:
        conn.close(code=int(how[-4:]))
    with pytest.raises(ConnectionLost):
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            sock.poll(0.05)
    assert not sock.connected


@pytest.mark.parametrize("kind", ["text", "binary", "array"])
def test_malformed_server_frames_are_counted_and_reset_the_connection(server, kind, caplog):
    sock = joined_socket(server.url)
    server.connections[0].send_garbage(kind)
    with pytest.raises(ConnectionLost, match="malformed"):
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            sock.poll(0.05)
    assert sock.stats["malformed"] == 1
    assert "malformed frame" in caplog.text
    sock.connect()  # the Socket itself is fine: connect again
    sock.join("room:1")


def test_binary_push_and_reply_round_trip(server):
    sock = joined_socket(server.url)
    ref = sock.send_push("room:1", "echo", binary=b"\x00\x01\xff")
    deadline = time.monotonic() + 2
    msgs = []
    while not msgs and time.monotonic() < deadline:
        msgs = sock.poll(0.1)
    assert msgs[0].ref == ref and msgs[0].status == "ok" and msgs[0].response == b"\x00\x01\xff"


def test_no_secret_in_errors_or_logs(server, caplog):
    server.faults.reject_upgrade = 403
    sock = Socket(server.url, params={"token": "s3cr3t-t0ken"}, **FAST)
    with pytest.raises(ConnectFailed) as info:
        sock.connect()
    assert "s3cr3t" not in str(info.value) and "s3cr3t" not in caplog.text
