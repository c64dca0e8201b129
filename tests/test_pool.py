"""The pool end to end: a spawned supervisor, forked workers, the Phoenix test server.

The seed report's scenarios through the whole stack, SIGSTOP, worker death with pushes in
flight, memory, fork safety. (The CLI and `pool start` are in test_cli.py.)
"""
import os
import signal
import threading
import time

import pytest

import pool
from pool import PushTimeout, Rejected, WorkerLost
from pool.errors import PoolError
from conftest import alive, rss_kib, wait_until

FAST = dict(heartbeat_interval=0.5, send_timeout=0.5, connect_timeout=0.5, push_timeout=2.0,
            ack_interval=0.1, kill_timeout=0.5, min_uptime=0.5, backoff_initial=0.05,
            shutdown_timeout=2.0)


def channel(p, topic):
    return next(c for c in p.status()["channels"] if c["topic"] == topic)


def joined_conn(server, topic, exclude=()):
    return next((c for c in server.connections if topic in c.joined and c not in exclude), None)


@pytest.fixture
def make_pool():
    pools = []

    def make(url, topics, **kw):
        p = pool.Pool(url, topics=topics, **{**FAST, **kw})
        pools.append(p)
        assert p.wait_joined(10), p.status()
        return p
    yield make
    for p in pools:
        p.close()


def test_pool_pushes_listens_reports_status_and_leaves_nothing_behind(server):
    with pool.Pool(server.url, topics=["room:1", "room:2"], **FAST) as p:
        assert p.wait_joined(10)
        assert p.push("room:1", "echo", {"a": 1}) == {"a": 1}
        listener = p.listen("room:2", timeout=3)
        threading.Timer(0.3, server.broadcast, ("room:2", "news", {"n": 1})).start()
        msg = next(listener)
        assert (msg.topic, msg.event, msg.payload) == ("room:2", "news", {"n": 1})
        status = p.status()
        assert set(status["pool"]) >= {"name", "pid", "state", "uptime"}
        assert [c["topic"] for c in status["channels"]] == ["room:1", "room:2"]
        for ch in status["channels"]:
            assert set(ch) >= {"topic", "state", "pid", "restarts", "last_ack_age",
                               "last_heartbeat_age", "rss", "exit_reasons"}
            assert ch["state"] == "RUNNING" and ch["rss"] > 0 and ch["last_ack_age"] < 1
        pids = [status["pool"]["pid"]] + [c["pid"] for c in status["channels"]]
        run_dir = p.config.run_dir
    assert wait_until(lambda: not any(alive(pid) for pid in pids), 5)
    assert not os.path.exists(run_dir)


def test_seed_stall_heals_within_send_timeout_every_push_has_one_outcome(server, make_pool):
    p = make_pool(server.url, ["room:1", "room:2"])
    sup_pid = p.status()["pool"]["pid"]
    rss_before = rss_kib(sup_pid)
    stalled = joined_conn(server, "room:2")
    stalled.stop_reading()
    start = time.monotonic()
    outcomes, errors = [], []

    def producer(topic, n):
        for i in range(n):
            try:
                p.push(topic, "echo", {"i": i, "blob": "x" * 20000}, timeout=3)
                outcomes.append((topic, "ok"))
            except (PushTimeout, Rejected, WorkerLost, pool.ReplyError) as exc:
                outcomes.append((topic, type(exc).__name__))
            except Exception as exc:  # noqa: BLE001 - anything else is a defect
                errors.append(exc)
    threads = [threading.Thread(target=producer, args=(t, 30)) for t in ("room:1", "room:2", "room:2")]
    for t in threads:
        t.start()
    assert server.wait_for(lambda: joined_conn(server, "room:2", exclude=(stalled,)) is not None, 5)
    healed = time.monotonic() - start
    for t in threads:
        t.join(30)
    assert not errors and len(outcomes) == 90, "every push the pool accepted ends in one outcome"
    assert healed < 0.5 + 1.5, f"healed after {healed:.2f}s"
    assert all(o == "ok" for t, o in outcomes if t == "room:1"), "the other channel was untouched"
    assert channel(p, "room:2")["restarts"] == 0, "healed inside the worker, no respawn needed"
    assert rss_kib(sup_pid) - rss_before < 2048, "the supervisor carries no application data"


def test_seed_stall_with_heartbeats_only_heals_on_the_heartbeat_deadline(server, make_pool):
    p = make_pool(server.url, ["room:1"], heartbeat_interval=0.3)
    silent = joined_conn(server, "room:1")
    silent.stop_reading()  # nothing is pushed: only heartbeats go to the stalled peer
    start = time.monotonic()
    assert server.wait_for(lambda: joined_conn(server, "room:1", exclude=(silent,)) is not None, 5)
    assert time.monotonic() - start < 0.3 + 0.3 + 1.0
    assert p.push("room:1", "echo", {}) == {}


def test_sigstopped_worker_is_replaced_and_its_inflight_push_ends_worker_lost(server, make_pool):
    p = make_pool(server.url, ["room:1", "room:2"])
    deadline = p.config.supervisor_config().ack_deadline
    old = channel(p, "room:1")["pid"]
    result = {}

    def inflight():
        start = time.monotonic()
        try:
            p.push("room:1", "noreply", {}, timeout=20)
        except Exception as exc:  # noqa: BLE001
            result["exc"], result["after"] = exc, time.monotonic() - start
    t = threading.Thread(target=inflight)
    t.start()
    assert server.wait_for(lambda: any(m["event"] == "noreply" for _, m in server.received))
    os.kill(old, signal.SIGSTOP)
    start = time.monotonic()
    assert wait_until(lambda: channel(p, "room:1")["pid"] not in (None, old)
                      and channel(p, "room:1")["state"] == "RUNNING", deadline + 5)
    replaced = time.monotonic() - start
    t.join(5)
    assert isinstance(result["exc"], WorkerLost)
    assert result["after"] < deadline + 2, "seen at the kill, not after the push timeout"
    assert replaced < deadline + 2
    assert not alive(old)
    assert channel(p, "room:1")["exit_reasons"][-1]["reason"] == "ack timeout"
    assert channel(p, "room:2")["restarts"] == 0
    assert p.push("room:1", "echo", {"back": 1}) == {"back": 1}


def test_memory_error_in_a_handler_exits_with_its_own_code_and_is_replaced(server, make_pool):
    p = make_pool(server.url, [],
                  config={"pool": {}, "channels": [{"topic": "room:1", "handler": "handlers:exhaust_memory"},
                                                   {"topic": "room:2"}]})
    old = channel(p, "room:1")["pid"]
    server.broadcast("room:1", "boom", {})
    assert wait_until(lambda: channel(p, "room:1")["pid"] not in (None, old)
                      and channel(p, "room:1")["state"] == "RUNNING", 10)
    last = channel(p, "room:1")["exit_reasons"][-1]
    assert (last["reason"], last["exit"]) == ("memory limit", "exit code 5 (MEMORY)")
    assert channel(p, "room:2")["restarts"] == 0


def test_runaway_memory_dies_at_the_rlimit_and_only_that_worker_is_replaced(server, make_pool):
    p = make_pool(server.url, [], memory_limit="64MiB",
                  config={"pool": {}, "channels": [{"topic": "room:1", "handler": "handlers:grow"},
                                                   {"topic": "room:2"}]})
    old, sibling = channel(p, "room:1")["pid"], channel(p, "room:2")["pid"]
    server.broadcast("room:1", "grow", {})
    assert wait_until(lambda: channel(p, "room:1")["pid"] not in (None, old), 10)
    assert channel(p, "room:1")["exit_reasons"][-1]["reason"] == "memory limit"
    assert channel(p, "room:2")["pid"] == sibling


def test_unknown_topic_is_rejected(server, make_pool):
    p = make_pool(server.url, ["room:1"])
    with pytest.raises(Rejected, match="unknown topic"):
        p.push("room:nope", "echo", {})


def test_client_is_safe_across_fork(server, make_pool):
    from pool.config import channel_socket_path
    from pool.workerclient import WorkerConnection
    p = make_pool(server.url, ["room:1"])
    probe = WorkerConnection(channel_socket_path(p.config.run_dir, "room:1"))
    client = pool.Client(p.config.run_dir)
    assert client.push("room:1", "echo", {"who": "parent"}) == {"who": "parent"}
    accepted = probe.info()["clients"]["clients_accepted"]
    pid = os.fork()
    if pid == 0:  # the child must not reuse the parent's socket
        try:
            ok = client.push("room:1", "echo", {"who": "child"}) == {"who": "child"}
        except BaseException:
            ok = False
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    # the child opened a connection of its own instead of writing into the parent's
    assert probe.info()["clients"]["clients_accepted"] == accepted + 1
    assert client.push("room:1", "echo", {"who": "parent again"}) == {"who": "parent again"}


def test_retry_lost_resends_to_the_replacement(server, make_pool):
    p = make_pool(server.url, ["room:1"])
    client = pool.Client(p.config.run_dir, retry_lost=1)
    old = channel(p, "room:1")["pid"]
    threading.Timer(0.3, os.kill, (old, signal.SIGKILL)).start()
    start = time.monotonic()
    with pytest.raises(PushTimeout):  # "noreply" never answers: the retry then times out
        client.push("room:1", "noreply", {}, timeout=2.0)
    assert time.monotonic() - start < 3.5
    sent = [m for _, m in server.received if m["event"] == "noreply"]
    assert len(sent) == 2, "sent once to the first worker, once to its replacement"


def test_pool_reports_a_supervisor_that_cannot_start(tmp_path):
    run_dir = tmp_path / "shared"
    run_dir.mkdir()
    run_dir.chmod(0o777)  # valid config, but the supervisor refuses a world-writable run_dir
    with pytest.raises(PoolError, match="exited at start"):
        pool.Pool("ws://127.0.0.1:9/socket", topics=["room:1"], run_dir=str(run_dir))
    assert not any(os.scandir(run_dir)), "nothing was left behind"


def test_a_pool_over_wss_trusts_the_configured_ca(tmp_path):
    import ssl

    import trustme

    from pool.testserver import PhoenixServer
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with PhoenixServer(ssl_context=server_ctx) as srv:
        with pool.Pool(srv.url, topics=["room:tls"], ca_certs=str(ca_file), **FAST) as p:
            assert p.wait_joined(10)
            assert p.push("room:tls", "echo", {"secure": True}) == {"secure": True}
        # without the CA the worker cannot verify the server: it keeps retrying, never joins
        with pool.Pool(srv.url, topics=["room:tls"], start_timeout=1.0, **FAST) as p:
            ch = p.status()["channels"][0]
            assert ch["worker_state"] in ("backoff", "connecting") and ch["state"] == "DEGRADED"


def test_a_script_without_a_main_guard_gets_a_clear_error(tmp_path):
    import subprocess
    import sys
    script = tmp_path / "noguard.py"
    script.write_text('import pool\np = pool.Pool("ws://127.0.0.1:9/socket", topics=["a"], start_timeout=5)\n')
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert 'if __name__ == "__main__":' in out.stderr
    assert out.stderr.count("Traceback") <= 3  # a clear message, not a cascade of processes


def test_a_client_for_a_pool_not_started_yet_raises_not_running_on_use(tmp_path):
    client = pool.Client(str(tmp_path / "not-yet"))
    with pytest.raises(pool.NotRunning):
        client.push("room:1", "echo", {}, timeout=1)
    with pytest.raises(pool.NotRunning):
        client.status()
    with pytest.raises(pool.NotRunning, match="not found"):
        pool.Client(str(tmp_path / "missing.toml"))


def test_a_listener_follows_its_channel_to_the_replacement_worker(server, make_pool):
    p = make_pool(server.url, ["room:1"])
    got = []
    listener = p.listen("room:1", timeout=8)

    def consume():
        for msg in listener:
            got.append(msg.payload)
            if msg.payload == {"n": 2}:
                return
    t = threading.Thread(target=consume)
    t.start()
    assert server.wait_for(lambda: len(server.connections) == 1)
    time.sleep(0.3)  # let the listener subscribe (broadcasts are not replayed)
    server.broadcast("room:1", "news", {"n": 1})
    assert wait_until(lambda: got == [{"n": 1}], 3)
    old = channel(p, "room:1")["pid"]
    os.kill(old, signal.SIGKILL)
    assert wait_until(lambda: channel(p, "room:1")["pid"] not in (None, old)
                      and channel(p, "room:1")["state"] == "RUNNING", 5)
    # the listener resubscribes on its own; keep broadcasting until it has
    assert wait_until(lambda: server.broadcast("room:1", "news", {"n": 2}) or {"n": 2} in got, 5, 0.2)
    t.join(5)
    assert got[0] == {"n": 1} and got[-1] == {"n": 2}


def test_push_refuses_a_timeout_that_is_not_positive(tmp_path):
    client = pool.Client(str(tmp_path))
    for bad in (0, -1, float("nan"), "5", True):
        with pytest.raises(ValueError, match="timeout"):
            client.push("room:1", "echo", {}, timeout=bad)
