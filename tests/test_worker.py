"""The worker process: reconnect, rejoin, push outcomes, the bounded buffer, listeners, faults.

Each test runs a real worker process (spawned) against the project's Phoenix test server or
the seed's stall listener, and talks to it over its unix socket like pool.Client does.
"""
import os
import signal
import socket
import threading
import time

import pytest

from pool import framing
from pool.errors import PushTimeout, Rejected, ReplyError, WorkerLost
from pool.worker import ChannelSpec
from pool.workerclient import WorkerConnection
from pool.testserver import StallListener
from conftest import (check_buffered_pushes_go_out_in_order, pipeline, rss_kib, wait_until,
                      worker_settings)


settings = worker_settings


def test_push_outcomes_ok_error_timeout_rejected(server, run_dir, spawn_worker):
    w = spawn_worker(settings(server.url, run_dir), [ChannelSpec("room:1")])
    w.wait_state("joined")
    assert w.client.push("room:1", "echo", {"a": 1}) == {"a": 1}
    with pytest.raises(ReplyError) as info:
        w.client.push("room:1", "error", {"b": 2})
    assert info.value.response == {"b": 2}
    start = time.monotonic()
    with pytest.raises(PushTimeout):
        w.client.push("room:1", "noreply", {}, timeout=0.3)
    assert time.monotonic() - start < 1.0
    with pytest.raises(Rejected, match="unknown topic"):
        w.client.push("room:zzz", "echo", {})
    stats = w.info()["stats"]
    assert (stats["replies_ok"], stats["replies_error"], stats["timeouts"], stats["rejected"]) == (1, 1, 1, 1)


def test_seed_stall_with_pushes_heals_within_send_timeout_and_memory_stays_flat(run_dir, spawn_worker):
    with StallListener() as stall:
        w = spawn_worker(settings(stall.url, run_dir, send_timeout=0.5, push_timeout=5,
                                  heartbeat_interval=30), [ChannelSpec("room:1")])
        w.wait_state("joined")
        blob = {"blob": "x" * 16384}
        rss_before, worst, outcomes = rss_kib(w.proc.pid), 0.0, {"ok": 0, "timeout": 0}
        end = time.monotonic() + 3.0
        while time.monotonic() < end:
            start = time.monotonic()
            try:
                w.client.push("room:1", "echo", blob, timeout=5)
                outcomes["ok"] += 1
            except PushTimeout as exc:
                assert "connection lost" in str(exc)
                outcomes["timeout"] += 1
            worst = max(worst, time.monotonic() - start)
        info = w.info()
        # the stall listener never replies: each push ends when its connection is given up
        assert outcomes["timeout"] >= 3 and outcomes["ok"] == 0
        assert worst < 0.5 + 0.5, f"a push waited {worst:.2f}s; send_timeout is 0.5s"
        assert info["stats"]["reconnects"] >= 3 and stall.connections >= 3
        assert info["last_lost_reason"].startswith("send timeout")
        assert rss_kib(w.proc.pid) - rss_before < 8 * 1024
        assert w.wait_state("joined")  # it rejoined the fresh connection


def test_seed_stall_with_heartbeats_only_heals_on_the_heartbeat_deadline(run_dir, spawn_worker):
    with StallListener() as stall:
        w = spawn_worker(settings(stall.url, run_dir, heartbeat_interval=0.2, heartbeat_timeout=0.3),
                         [ChannelSpec("room:1")])
        assert stall.wait_connections(3, timeout=4), "the worker did not reconnect"
        info = w.info()
        assert info["last_lost_reason"] == "heartbeat timeout"
        assert info["stats"]["reconnects"] >= 2


def test_K10_C5_C13_buffered_pushes_are_sent_in_order_after_the_join(server, run_dir, spawn_worker):
    server.faults.reject_joins = True
    w = spawn_worker(settings(server.url, run_dir), [ChannelSpec("room:1")])
    assert server.wait_for(lambda: server.stats["joins_rejected"] >= 1)
    check_buffered_pushes_go_out_in_order(
        server, w, lambda: setattr(server.faults, "reject_joins", False))


def test_C13_a_buffered_push_that_timed_out_is_never_sent(server, run_dir, spawn_worker):
    server.faults.reject_joins = True
    w = spawn_worker(settings(server.url, run_dir), [ChannelSpec("room:1")])
    assert server.wait_for(lambda: server.stats["joins_rejected"] >= 1)
    start = time.monotonic()
    with pytest.raises(PushTimeout, match="not sent"):
        w.client.push("room:1", "never_sent", {}, timeout=0.3)
    assert time.monotonic() - start < 1.0
    server.faults.reject_joins = False
    w.wait_state("joined")
    w.client.push("room:1", "after", {})
    assert [m["event"] for _, m in server.received if m["event"] in ("never_sent", "after")] == ["after"]


def test_push_buffer_is_bounded(server, run_dir, spawn_worker):
    server.faults.reject_joins = True
    w = spawn_worker(settings(server.url, run_dir, push_buffer=2), [ChannelSpec("room:1")])
    out = pipeline(w.path, [("room:1", "a", 0.5), ("room:1", "b", 0.5), ("room:1", "c", 0.5)])
    assert [h["outcome"] for h in out] == ["timeout", "timeout", "rejected"]
    assert "buffer full" in out[2]["reason"]


def test_C8_X4_channel_crash_rejoins_with_backoff(server, run_dir, spawn_worker):
    w = spawn_worker(settings(server.url, run_dir), [ChannelSpec("room:1")])
    w.wait_state("joined")
    pid = w.info()["pid"]
    with pytest.raises(PushTimeout):
        w.client.push("room:1", "crash", {}, timeout=0.3)  # a crashing push never gets a reply
    assert server.wait_for(lambda: server.stats["joins"] >= 2)
    info = w.wait_state("joined")
    assert info["stats"]["rejoins"] == 1 and info["pid"] == pid
    assert w.client.push("room:1", "echo", {"back": True}) == {"back": True}


def test_C9_phx_close_is_never_rejoined(server, run_dir, spawn_worker):
    w = spawn_worker(settings(server.url, run_dir), [ChannelSpec("room:1")])
    w.wait_state("joined")
    w.client.push("room:1", "stop", {})
    info = w.wait_state("degraded")
    assert info["channels"][0]["state"] == "closed"
    with pytest.raises(Rejected, match="closed by the server"):
        w.client.push("room:1", "echo", {})
    time.sleep(0.3)  # longer than every rejoin step: prove no rejoin happens
    assert server.stats["joins"] == 1


def test_C4_C6_join_timeout_sends_leave_and_retries(run_dir, spawn_worker):
    with StallListener(joins=0) as stall:
        w = spawn_worker(settings(stall.url, run_dir, join_timeout=0.2, heartbeat_interval=30),
                         [ChannelSpec("room:1")])
        assert wait_until(lambda: w.info()["stats"]["rejoins"] >= 2, 3)
        assert w.info()["channels"][0]["last_error"] == "join timeout"


def test_X6_forbidden_upgrade_is_its_own_state_and_retried_slowly(server, run_dir, spawn_worker):
    server.faults.reject_upgrade = 403
    w = spawn_worker(settings(server.url, run_dir), [ChannelSpec("room:1")])
    w.wait_state("forbidden")
    attempts = server.stats["upgrades_rejected"]
    time.sleep(0.2)
    assert server.stats["upgrades_rejected"] <= attempts + 1  # the 0.3 s schedule, not 10 ms
    server.faults.reject_upgrade = None
    w.wait_state("joined", timeout=3)


@pytest.mark.parametrize("how", ["close_1000", "close_1001", "close_1012", "abort"])
def test_K15_X8_reconnects_and_rejoins_after_any_server_close(server, run_dir, spawn_worker, how):
    w = spawn_worker(settings(server.url, run_dir), [ChannelSpec("room:1"), ChannelSpec("room:2")])
    w.wait_state("joined")
    conn = server.connections[0]
    conn.abort() if how == "abort" else conn.close(code=int(how[-4:]))
    assert server.wait_for(lambda: server.stats["joins"] >= 4)
    info = w.wait_state("joined")
    assert info["stats"]["reconnects"] == 1 and len(server.all_connections) == 2


@pytest.mark.parametrize("kind", ["text", "binary", "array"])
def test_malformed_frames_are_counted_logged_and_the_worker_lives(server, run_dir, spawn_worker, kind):
    w = spawn_worker(settings(server.url, run_dir), [ChannelSpec("room:1")])
    pid = w.wait_state("joined")["pid"]
    server.connections[0].send_garbage(kind)
    assert server.wait_for(lambda: len(server.all_connections) == 2)
    info = w.wait_state("joined")
    assert info["socket"]["malformed"] == 1 and info["pid"] == pid
    assert "malformed" in info["last_lost_reason"]


def test_listeners_and_handlers_receive_broadcasts(server, run_dir, spawn_worker, tmp_path, monkeypatch):
    record = tmp_path / "rec.jsonl"
    monkeypatch.setenv("POOL_TEST_RECORD", str(record))
    w = spawn_worker(settings(server.url, run_dir),
                     [ChannelSpec("room:1", handler="handlers:record"), ChannelSpec("room:2")])
    w.wait_state("joined")
    listener = WorkerConnection(w.path)
    listener.subscribe("room:1")
    server.broadcast("room:2", "other", {"n": 0})
    server.broadcast("room:1", "new", {"n": 1})
    msg = listener.next_message(timeout=3)
    assert (msg.topic, msg.event, msg.payload) == ("room:1", "new", {"n": 1})
    assert wait_until(lambda: record.exists() and record.read_text().strip(), 3)
    assert record.read_text().splitlines() == ['["room:1", "new", {"n": 1}]']


def test_a_failing_handler_is_counted_and_the_worker_goes_on(server, run_dir, spawn_worker):
    w = spawn_worker(settings(server.url, run_dir), [ChannelSpec("room:1", handler="handlers:explode")])
    w.wait_state("joined")
    server.broadcast("room:1", "new", {})
    assert wait_until(lambda: w.info()["stats"]["handler_errors"] == 1, 3)
    assert w.client.push("room:1", "echo", {"ok": 1}) == {"ok": 1}


def test_a_listener_that_does_not_read_is_dropped_from_not_buffered(server, run_dir, spawn_worker):
    w = spawn_worker(settings(server.url, run_dir, client_out_limit=16 * 1024), [ChannelSpec("room:1")])
    w.wait_state("joined")
    listener = WorkerConnection(w.path)
    listener.subscribe("room:1")
    for i in range(1500):
        server.broadcast("room:1", "new", {"i": i, "pad": "p" * 1024})
    assert wait_until(lambda: w.info()["clients"]["dropped_messages"] > 0, 5)
    seen, dropped = 0, 0
    while True:
        msg = listener.next_message(timeout=0.5)
        if msg is None:
            break
        if msg.event == "pool:dropped":
            dropped += msg.payload["count"]
        else:
            seen += 1
    assert dropped > 0 and seen + dropped == 1500


def test_worker_death_ends_in_flight_pushes_at_once_with_worker_lost(server, run_dir, spawn_worker):
    w = spawn_worker(settings(server.url, run_dir, push_timeout=10), [ChannelSpec("room:1")])
    w.wait_state("joined")
    threading.Timer(0.2, os.kill, (w.proc.pid, signal.SIGKILL)).start()
    start = time.monotonic()
    with pytest.raises(WorkerLost):
        w.client.push("room:1", "noreply", {}, timeout=10)
    assert time.monotonic() - start < 1.5


def test_graceful_stop_leaves_channels(server, run_dir, spawn_worker):
    w = spawn_worker(settings(server.url, run_dir), [ChannelSpec("room:1")])
    w.wait_state("joined")
    os.kill(w.proc.pid, signal.SIGTERM)
    w.proc.join(5)
    assert w.proc.exitcode == 0
    assert server.wait_for(lambda: server.stats["leaves"] == 1)
    assert not os.path.exists(w.path)


def test_bad_requests_get_an_error_reply_and_the_worker_lives(server, run_dir, spawn_worker):
    w = spawn_worker(settings(server.url, run_dir), [ChannelSpec("room:1")])
    w.wait_state("joined")
    with pytest.raises(Rejected, match="unknown op"):
        w.client.request({"op": "frobnicate"})
    with pytest.raises(Rejected, match="topic and event"):
        w.client.request({"op": "push", "topic": 5})
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.connect(w.path)
    raw.sendall(b"\x00\x00\x00\x05nojsn")
    head, _ = framing.recv_frame(raw, framing.Reader(), time.monotonic() + 3)
    assert head["op"] == "error" and "bad frame" in head["error"]
    raw.close()
    assert w.client.push("room:1", "echo", {"alive": 1}) == {"alive": 1}


def test_a_server_that_drops_every_connection_at_once_is_retried_on_a_growing_schedule(
        server, run_dir, spawn_worker):
    w = spawn_worker(settings(server.url, run_dir, heartbeat_interval=5,
                              reconnect_schedule=(0.01, 0.1, 0.4)), [ChannelSpec("room:1")])
    w.wait_state("joined")
    server.faults.reject_joins = True  # keep new connections from looking healthy

    def drop_all():
        for conn in server.connections:
            conn.abort()
    stop = time.monotonic() + 1.5
    while time.monotonic() < stop:
        drop_all()
        time.sleep(0.01)
    # 0.01 + 0.1 + 0.4 + 0.4 ...: a handful of reconnects in 1.5 s, not one every 10 ms
    assert 3 <= len(server.all_connections) <= 8, len(server.all_connections)


def test_pushes_awaiting_a_reply_are_capped(server, run_dir, spawn_worker):
    w = spawn_worker(settings(server.url, run_dir, max_inflight=3), [ChannelSpec("room:1")])
    w.wait_state("joined")
    out = pipeline(w.path, [("room:1", "noreply", 0.5)] * 5)
    assert [h["outcome"] for h in out] == ["timeout"] * 3 + ["rejected"] * 2
    assert "awaiting a reply" in out[3]["reason"]
    assert w.info()["inflight"] == 0
    assert w.client.push("room:1", "echo", {"after": 1}) == {"after": 1}
