"""`pool demo` / `scripts/demo`: the project's Phoenix test server and a pool on loopback.

Shows channels joined, then three faults and how each heals:
1. the seed report's stall: the server stops reading one channel's connection while a client
   keeps pushing; the worker's send gives up within send_timeout, reconnects and rejoins;
2. the server stops answering one connection's heartbeats; the worker notices at the
   heartbeat deadline and reconnects;
3. SIGSTOP on one worker (a wedge no in-process check can see); the supervisor misses its
   acks, kills it after ack_deadline and starts a replacement.
"""
import os
import signal
import sys
import tempfile
import threading
import time

from .cli import format_status
from .embedded import Pool
from .errors import PoolError

SETTINGS = dict(heartbeat_interval=1.0, send_timeout=2.0, connect_timeout=2.0, push_timeout=3.0,
                ack_interval=0.25, kill_timeout=1.0, min_uptime=1.0, backoff_initial=0.2,
                log_level="warning", name="demo")


def say(text=""):
    print(text, flush=True)


def _joined_conn(server, topic, exclude=()):
    for conn in server.connections:
        if topic in conn.joined and conn not in exclude:
            return conn
    return None


def _wait(predicate, timeout, pool=None, topic=None):
    """Wait for ``predicate``; meanwhile show ``topic``'s live state every half second."""
    start = time.monotonic()
    deadline = start + timeout
    next_line = start + 0.5
    last = None
    while time.monotonic() < deadline:
        if predicate():
            return True
        if pool is not None and time.monotonic() >= next_line:
            next_line += 0.5
            line = _live_line(pool, topic)
            if line != last:
                say(f"    {time.monotonic() - start:4.1f}s  {line}")
                last = line
        time.sleep(0.05)
    return False


def _live_line(pool, topic):
    try:
        ch = _channel(pool, topic)
    except (KeyError, PoolError):
        return "status unavailable"
    return (f"{topic}: {ch['state']}/{ch.get('worker_state') or '-'}  pid {ch['pid']}  "
            f"last ack {ch['last_ack_age'] if ch['last_ack_age'] is not None else '-'}s ago  "
            f"restarts {ch['restarts']}")


def _channel(pool, topic):
    for ch in pool.status()["channels"]:
        if ch["topic"] == topic:
            return ch
    raise KeyError(topic)


def stall_scene(server, pool, topic, send_timeout):
    say(f"\n[1] stall: the server stops reading {topic}'s connection; a client keeps pushing")
    conn = _joined_conn(server, topic)
    conn.stop_reading()
    start = time.monotonic()
    outcomes = []

    def producer():
        for _ in range(3):
            try:
                pool.push(topic, "echo", {"blob": "x" * 200_000}, timeout=send_timeout + 2)
                outcomes.append("ok")
            except PoolError as exc:
                outcomes.append(type(exc).__name__)
    thread = threading.Thread(target=producer, daemon=True)
    thread.start()
    healed = _wait(lambda: _joined_conn(server, topic, exclude=(conn,)) is not None, 20, pool, topic)
    elapsed = time.monotonic() - start
    thread.join(10)
    if healed:
        say(f"    healed in {elapsed:.1f}s: the send gave up after send_timeout={send_timeout:g}s, "
            f"the worker reconnected and rejoined (same pid {_channel(pool, topic)['pid']})")
        say(f"    push outcomes while stalled: {', '.join(outcomes) or '-'} (each one ended, none hung)")
    else:
        say(f"    NOT healed after {elapsed:.1f}s")
    conn.abort()
    return healed


def heartbeat_scene(server, pool, topic, interval):
    say(f"\n[2] the server stops answering {topic}'s heartbeats (the connection looks open)")
    conn = _joined_conn(server, topic)
    conn.faults.drop_heartbeats = True
    start = time.monotonic()
    healed = _wait(lambda: _joined_conn(server, topic, exclude=(conn,)) is not None, 20, pool, topic)
    elapsed = time.monotonic() - start
    if healed:
        say(f"    healed in {elapsed:.1f}s: no heartbeat reply within heartbeat_timeout={interval:g}s, "
            f"so the worker reconnected and rejoined")
    else:
        say(f"    NOT healed after {elapsed:.1f}s")
    return healed


def sigstop_scene(pool, topic, ack_deadline, log_file):
    old = _channel(pool, topic)["pid"]
    say(f"\n[3] SIGSTOP to {topic}'s worker (pid {old}): it can no longer run any check itself")
    os.kill(old, signal.SIGSTOP)
    start = time.monotonic()

    def replaced():
        ch = _channel(pool, topic)
        return ch["pid"] not in (None, old) and ch["state"] == "RUNNING"
    healed = _wait(replaced, ack_deadline + 20, pool, topic)
    elapsed = time.monotonic() - start
    if healed:
        ch = _channel(pool, topic)
        reason = (ch["exit_reasons"] or ["?"])[-1]
        if isinstance(reason, dict):
            reason = reason.get("reason")
        say(f"    replaced in {elapsed:.1f}s: no ack for ack_deadline={ack_deadline:g}s, killed "
            f"({reason}), new worker pid {ch['pid']} joined")
        with open(log_file) as fh:
            dumped = "most recent call first" in fh.read()
        if dumped:
            say(f"    the stuck worker's Python stack was dumped to {log_file} before the kill")
    else:
        say(f"    NOT replaced after {elapsed:.1f}s")
    return healed


def main(forever=False, channels=8):
    from .testserver import PhoenixServer
    channels = max(3, channels)
    topics = [f"room:{i}" for i in range(1, channels + 1)]
    log_dir = tempfile.mkdtemp(prefix="pool-demo-")
    log_file = os.path.join(log_dir, "pool.log")
    say(f"phoenix-pool demo: a Phoenix-protocol test server and a pool of {channels} channels "
        "on 127.0.0.1")
    with PhoenixServer() as server:
        say(f"server: {server.url}   pool log: {log_file}")
        start = time.monotonic()
        with Pool(server.url, topics=topics, log_file=log_file, **SETTINGS) as pool:
            joined = pool.wait_joined(20)
            say(f"\n{channels} channels {'joined' if joined else 'NOT all joined'} in "
                f"{time.monotonic() - start:.1f}s")
            say(format_status(pool.status()))
            results = [
                stall_scene(server, pool, topics[2], SETTINGS["send_timeout"]),
                heartbeat_scene(server, pool, topics[3], SETTINGS["heartbeat_interval"]),
                sigstop_scene(pool, topics[4], pool.config.supervisor_config().ack_deadline, log_file),
            ]
            pool.wait_joined(10)
            ok = sum(1 for t in topics if _push_ok(pool, t))
            say(f"\nafter the faults: {ok}/{len(topics)} channels answer a push")
            say(format_status(pool.status()))
            if forever:
                say("\n--forever: refreshing every 2s; Ctrl-C to stop")
                try:
                    while True:
                        time.sleep(2)
                        say("\x1b[2J\x1b[H" + format_status(pool.status()))
                except KeyboardInterrupt:
                    pass
        say("\npool stopped; every worker gone")
    healed_all = all(results) and ok == len(topics)
    say("demo: all faults healed" if healed_all else "demo: SOME FAULT DID NOT HEAL (see the log)")
    return 0 if healed_all else 1


def _push_ok(pool, topic):
    try:
        return pool.push(topic, "echo", {"ping": topic}, timeout=5) == {"ping": topic}
    except PoolError:
        return False


if __name__ == "__main__":
    sys.exit(main())
