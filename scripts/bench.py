#!/usr/bin/env python3
"""Benchmark the pool against plain websocket-client, everything in one run.

    .venv/bin/python scripts/bench.py [--quick] [--out FILE]

Prints ONE JSON document on stdout (progress goes to stderr). Every figure is paired with a
baseline measured in the same run against the same server, so it reads as a ratio:

1. sequential push -> reply round trips per second: pool.Client.push vs one websocket-client
   connection in this process (send a V2 frame, recv the reply);
2. the same with 100 pushes in flight on one channel: a pipelined client on the worker's unix
   socket (one thread, 100 outstanding request ids) vs websocket-client pipelining 100 frames;
   a 100-thread pool.Client variant is reported alongside, as what threaded callers see;
3. time to start a pool of 50 and 200 channels until every channel is joined vs 50/200 plain
   connections connected and joined one after the other in one process;
4. respawn-to-joined latency after SIGKILL of a worker vs one plain connect + join;
5. per-worker PSS and the supervisor's RSS vs one plain websocket-client process holding one
   joined connection (and the per-connection memory of a process holding 200);
6. the supervisor's (and the whole pool's) idle CPU with 200 channels vs one process holding
   200 plain connections and sending the same heartbeats.

The server is the project's PhoenixServer (pool.testserver), run in a separate process so that
its Python threads do not share this process's GIL. See docs/benchmarks.md.
"""
import argparse
import datetime
import json
import os
import platform
import select
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

CLK_TCK = os.sysconf("SC_CLK_TCK")

# Short, sane pool settings used for every pool in the run (reported in the JSON).
POOL_SETTINGS = dict(
    heartbeat_interval=5.0, ack_interval=0.5, send_timeout=5.0, connect_timeout=5.0,
    push_timeout=10.0, backoff_initial=0.05, kill_timeout=2.0, shutdown_timeout=5.0,
    min_uptime=1.0, log_level="warning",
)

FULL = dict(seq_n=3000, inflight_n=20000, window=100, threads_n=10000, reps=5,
            start_counts=(50, 200), respawn_samples=10, idle_seconds=10.0, connect_samples=20)
QUICK = dict(seq_n=500, inflight_n=2000, window=100, threads_n=1000, reps=1,
             start_counts=(10, 20), respawn_samples=3, idle_seconds=5.0, connect_samples=5)
RESPAWN_POLL = 0.005  # between status requests while waiting for a respawn
SETTLE = 0.2  # pause between measurements (lets the server's per-connection threads end)

# The test server in its own process: PhoenixServer with the kernel's default socket buffers,
# as a real server has (its rcvbuf=4096 default exists so stall tests fill a send buffer
# quickly; it made no measurable difference here). It stops when its stdin reaches EOF (the
# benchmark exited), on SIGTERM, or when this process dies (PR_SET_PDEATHSIG).
SERVER_CODE = r"""
import os, signal, sys  # argv: parent pid, a tag naming the benchmark run
from supervisor.child import set_pdeathsig
set_pdeathsig(signal.SIGTERM, expected_ppid=int(sys.argv[1])) or sys.exit(0)
from pool.testserver.server import PhoenixServer
srv = PhoenixServer("127.0.0.1", 0, rcvbuf=None, idle_timeout=120.0)
srv.start()
print(srv.url, flush=True)
try:
    sys.stdin.buffer.read()
finally:
    srv.stop()
"""


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Interrupted(BaseException):
    pass


def _on_term(signum, frame):
    raise Interrupted(f"signal {signum}")


# -- /proc readers --------------------------------------------------------------------------

def proc_kib(path, field):
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def pss_kib(pid):
    return proc_kib(f"/proc/{pid}/smaps_rollup", "Pss")


def rss_kib(pid):
    return proc_kib(f"/proc/{pid}/status", "VmRSS")


def cpu_ticks(pid):
    """utime + stime of a process, in clock ticks (/proc/PID/stat fields 14 and 15)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2:].split()
    return int(fields[11]) + int(fields[12])


def cpu_ns(pid):
    """On-CPU time of a process in ns, including threads that have ended: this process's own
    CPU clock; /proc/PID/schedstat (ns) for a single-threaded process; utime+stime ticks
    (/proc/PID/stat, 1/CLK_TCK s resolution) for a multi-threaded one (the test server)."""
    if pid == os.getpid():
        return time.process_time_ns()
    try:
        if len(os.listdir(f"/proc/{pid}/task")) == 1:
            with open(f"/proc/{pid}/schedstat") as f:
                return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    ticks = cpu_ticks(pid)
    return None if ticks is None else ticks * 1_000_000_000 // CLK_TCK


class CpuMeter:
    """CPU ns used by named processes between start() and stop()."""

    def __init__(self, **pids):
        self.pids = {k: v for k, v in pids.items() if v}

    def start(self):
        self.before = {k: cpu_ns(p) for k, p in self.pids.items()}
        return self

    def stop(self):
        after = {k: cpu_ns(p) for k, p in self.pids.items()}
        self.used = {k: (after[k] - self.before[k]) if after[k] is not None and self.before[k]
                     is not None else None for k in self.pids}
        return self.used


def per_op_us(used_list, counts):
    """Median over reps of CPU microseconds per operation, per process name."""
    out = {}
    for name in used_list[0]:
        vals = [u[name] / 1000.0 / n for u, n in zip(used_list, counts) if u.get(name) is not None]
        out[name] = round(med(vals), 1) if vals else None
    return out


def live_tagged(tag):
    """pids of processes (other than us) whose command line or title contains ``tag``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ")
        except OSError:
            continue
        if tag.encode() in cmd:
            found.append(int(entry))
    return found


def machine_facts():
    import websocket
    model = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = proc_kib("/proc/meminfo", "MemTotal")
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "mem_total_mib": round(mem / 1024) if mem else None,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "websocket_client": websocket.__version__,
        "loadavg_at_start": list(os.getloadavg()),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def cpu_totals():
    """(busy, total) jiffies of the whole machine from /proc/stat."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return sum(vals) - idle, sum(vals)


def ratio(a, b, digits=3):
    if a is None or b is None or b == 0:
        return None
    return round(a / b, digits)


def med(values):
    return statistics.median(values) if values else None


# -- plain websocket-client baseline --------------------------------------------------------

class Plain:
    """One websocket-client connection speaking Phoenix V2 by hand, one channel joined."""

    def __init__(self, url, topic, timeout=10.0):
        import websocket
        self.topic = topic
        self.ws = websocket.create_connection(url + "?vsn=2.0.0", timeout=timeout)
        self.ref = 0
        self.topic_json = json.dumps(topic)
        self.join_ref = "1"
        self.head = '["1",'  # every frame of this connection carries join_ref "1"
        self.send("phx_join", "{}")
        while True:
            msg = json.loads(self.ws.recv())
            if msg[1] == self.join_ref:
                if msg[4].get("status") != "ok":
                    raise RuntimeError(f"join refused: {msg}")
                return

    def send(self, event, payload_json):
        """Send ``[join_ref, ref, topic, event, payload]``; returns the ref."""
        self.ref += 1
        ref = str(self.ref)
        self.ws.send(f'{self.head}"{ref}",{self.topic_json},"{event}",{payload_json}]')
        return ref

    def heartbeat(self):
        self.ref += 1
        self.ws.send(f'[null,"{self.ref}","phoenix","heartbeat",{{}}]')

    def recv_reply(self):
        """The next reply frame as (ref, status, response)."""
        while True:
            msg = json.loads(self.ws.recv())
            if msg[3] == "phx_reply":
                return msg[1], msg[4]["status"], msg[4]["response"]

    def close(self):
        try:
            self.ws.close(timeout=0.5)
        except Exception:
            pass


def warm_up(c, n):
    for i in range(min(200, n)):
        c.send("echo", '{"i":%d}' % i)
        c.recv_reply()


def plain_sequential(url, n, meter):
    c = Plain(url, "bench:plain-seq")
    try:
        warm_up(c, n)
        meter.start()
        t0 = time.perf_counter()
        for i in range(n):
            ref = c.send("echo", '{"i":%d}' % i)
            rref, status, _ = c.recv_reply()
            if rref != ref or status != "ok":
                raise RuntimeError(f"unexpected reply {rref} {status}")
        rate = n / (time.perf_counter() - t0)
        meter.stop()
        return rate
    finally:
        c.close()


def plain_pipelined(url, n, window, meter):
    c = Plain(url, "bench:plain-pipe")
    try:
        warm_up(c, n)
        meter.start()
        t0 = time.perf_counter()
        sent = done = 0
        while sent < min(window, n):
            c.send("echo", '{"i":%d}' % sent)
            sent += 1
        while done < n:
            _, status, _ = c.recv_reply()
            if status != "ok":
                raise RuntimeError(f"unexpected status {status}")
            done += 1
            if sent < n:
                c.send("echo", '{"i":%d}' % sent)
                sent += 1
        rate = n / (time.perf_counter() - t0)
        meter.stop()
        return rate
    finally:
        c.close()


def plain_connect_join(url, samples):
    """Seconds for one plain connect + join (a list of samples), closing each connection."""
    out = []
    for i in range(samples):
        t0 = time.perf_counter()
        c = Plain(url, f"bench:cj{i}")
        out.append(time.perf_counter() - t0)
        c.close()
    return out


def hold_main(url, count, prefix, heartbeat):
    """Helper process (--_hold): connect and join COUNT plain connections one after the other,
    report the elapsed time as a JSON line, then keep them alive with a V2 heartbeat every
    HEARTBEAT seconds (reading the replies) until stdin reaches EOF."""
    from supervisor.child import set_pdeathsig
    if not set_pdeathsig(signal.SIGTERM, expected_ppid=os.getppid()):
        return 0
    import websocket  # noqa: F401  imported before the memory is measured
    rss_before = rss_kib(os.getpid())
    t0 = time.perf_counter()
    conns = [Plain(url, f"{prefix}{i}") for i in range(count)]
    elapsed = time.perf_counter() - t0
    print(json.dumps({"elapsed": elapsed, "pid": os.getpid(), "rss_before": rss_before,
                      "rss_after": rss_kib(os.getpid())}), flush=True)
    by_fd = {c.ws.sock.fileno(): c for c in conns}
    next_hb = time.monotonic() + heartbeat
    stdin = sys.stdin.fileno()
    while True:
        now = time.monotonic()
        if now >= next_hb:
            for c in conns:
                c.heartbeat()
            next_hb = now + heartbeat
        readable, _, _ = select.select([stdin, *by_fd], [], [], max(0.0, next_hb - time.monotonic()))
        for fd in readable:
            if fd == stdin:
                if not os.read(stdin, 4096):
                    for c in conns:
                        c.close()
                    return 0
            else:
                by_fd[fd].ws.recv()


class Hold:
    """A --_hold helper process: ``elapsed`` (connect + join time) and ``pid``."""

    def __init__(self, url, count, prefix, heartbeat):
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--_hold", str(count), "--_url", url,
             "--_prefix", prefix, "--_heartbeat", str(heartbeat)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT, env=_child_env())
        line = self.proc.stdout.readline()
        if not line:
            self.close()
            raise RuntimeError(f"hold helper ({count} connections) failed to start")
        info = json.loads(line)
        self.elapsed, self.pid = info["elapsed"], info["pid"]
        self.rss_before, self.rss_after = info["rss_before"], info["rss_after"]

    def close(self):
        _stop_child(self.proc)


def _child_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _stop_child(proc, timeout=5.0):
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.stdin.close()
    except OSError:
        pass
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- the pool -----------------------------------------------------------------------------

def start_pool(url, topics, name, **overrides):
    from pool import Pool
    t0 = time.perf_counter()
    p = Pool(url, topics=topics, name=name, start_timeout=60.0, **dict(POOL_SETTINGS, **overrides))
    joined = p.wait_joined(timeout=0)
    elapsed = time.perf_counter() - t0
    if not joined:
        log(f"pool {name}: not every channel joined within start_timeout")
    return p, elapsed, joined


def pool_sequential(p, topic, n, meter):
    for i in range(min(200, n)):  # warm-up (also opens the client's connection to the worker)
        p.push(topic, "echo", {"i": i})
    meter.start()
    t0 = time.perf_counter()
    for i in range(n):
        p.push(topic, "echo", {"i": i})
    rate = n / (time.perf_counter() - t0)
    meter.stop()
    return rate


def pool_pipelined(run_dir, topic, n, window, meter):
    """One thread keeps ``window`` pushes outstanding on the worker's unix socket, using the
    pool's own client <-> worker framing (ids match outcomes to requests)."""
    from pool import framing
    from pool.config import channel_socket_path
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30.0)
    sock.connect(channel_socket_path(run_dir, topic))
    reader = framing.Reader()
    errors = 0
    try:
        meter.start()
        t0 = time.perf_counter()
        sent = done = 0
        while done < n:
            out = bytearray()
            while sent < n and sent - done < window:
                sent += 1
                out += framing.encode({"op": "push", "id": sent, "topic": topic, "event": "echo",
                                       "timeout": 10.0}, b'{"i":%d}' % sent)
            if out:
                sock.sendall(out)
            data = sock.recv(1 << 20)
            if not data:
                raise RuntimeError("the worker closed the connection")
            reader.feed(data)
            for head, _ in reader.frames():
                if head.get("op") == "outcome":
                    done += 1
                    errors += head.get("outcome") != "ok"
        rate = n / (time.perf_counter() - t0)
        meter.stop()
    finally:
        sock.close()
    if errors:
        raise RuntimeError(f"{errors} pipelined pushes did not end ok")
    return rate


def pool_threads(run_dir, topic, n, threads, meter):
    """``threads`` threads, each with its own pool.Client, pushing sequentially."""
    from pool import Client
    per = max(1, n // threads)
    barrier = threading.Barrier(threads + 1)
    failures = []

    def run():
        with Client(run_dir, timeout=30.0) as c:
            try:
                c.push(topic, "echo", {})  # connect before the clock starts
                barrier.wait()
                for i in range(per):
                    c.push(topic, "echo", {"i": i})
            except Exception as exc:  # reported below
                failures.append(repr(exc))
                barrier.abort()

    ts = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
    for t in ts:
        t.start()
    barrier.wait()
    meter.start()
    t0 = time.perf_counter()
    for t in ts:
        t.join()
    elapsed = time.perf_counter() - t0
    meter.stop()
    if failures:
        raise RuntimeError(f"{len(failures)} threads failed, first: {failures[0]}")
    return per * threads / elapsed


def channel_pids(p):
    return {ch["topic"]: (ch["pid"], ch["state"]) for ch in p.status()["channels"]}


def respawn_samples(p, topics, samples):
    """SIGKILL one worker (a different channel each time, so no slot's backoff grows), then poll
    the supervisor's status until that channel shows a new pid RUNNING."""
    out, seen_new = [], []
    for topic in topics[:samples]:
        pid, state = channel_pids(p)[topic]
        if state != "RUNNING" or pid is None:
            log(f"respawn: {topic} is {state}, skipped")
            continue
        t0 = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        first_new = None
        deadline = t0 + 20.0
        while time.perf_counter() < deadline:
            raw = p.client.raw_status()
            slot = next(s for s in raw["slots"] if s["slot"] == topic)
            now = time.perf_counter()
            if slot["pid"] not in (None, pid):
                if first_new is None:
                    first_new = now - t0
                if slot["state"] == "RUNNING":
                    out.append(now - t0)
                    seen_new.append(first_new)
                    break
            time.sleep(RESPAWN_POLL)
        else:
            log(f"respawn: {topic} did not come back RUNNING within 20 s")
        time.sleep(0.2)
    return out, seen_new


def respawn_push_samples(p, topics):
    """SIGKILL a worker, then push to its channel until the replacement answers one ok."""
    from pool.config import channel_socket_path
    from pool.errors import PoolError
    from pool.workerclient import WorkerConnection
    out = []
    for topic in topics:
        pid, state = channel_pids(p)[topic]
        if state != "RUNNING" or pid is None:
            log(f"respawn: {topic} is {state}, skipped")
            continue
        path = channel_socket_path(p.config.run_dir, topic)
        t0 = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        while time.perf_counter() - t0 < 20.0:
            conn = WorkerConnection(path, connect_timeout=1.0)
            try:
                conn.push(topic, "echo", {}, timeout=1.0)
            except PoolError:
                time.sleep(0.001)
                continue
            finally:
                conn.close()
            out.append(time.perf_counter() - t0)
            break
        else:
            log(f"respawn: no push on {topic} answered within 20 s")
        time.sleep(0.2)
    return out


def idle_cpu(pids_by_group, seconds):
    """CPU use of each group of pids over ``seconds`` of idleness, as % of one core, from
    utime+stime ticks and from schedstat's nanoseconds."""
    before = {g: ([cpu_ticks(p) for p in pids], [cpu_ns(p) for p in pids])
              for g, pids in pids_by_group.items()}
    t0 = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - t0
    after = {g: ([cpu_ticks(p) for p in pids], [cpu_ns(p) for p in pids])
             for g, pids in pids_by_group.items()}
    result = {}
    for g in pids_by_group:
        ticks = sum(b - a for a, b in zip(before[g][0], after[g][0]) if a is not None and b is not None)
        ns = sum(b - a for a, b in zip(before[g][1], after[g][1]) if a is not None and b is not None)
        result[g] = {"ticks": ticks,
                     "percent_ticks": round(100.0 * ticks / CLK_TCK / elapsed, 3),
                     "percent_schedstat": round(100.0 * ns / 1e9 / elapsed, 4)}
    return result, elapsed


# -- the run ------------------------------------------------------------------------------

def run(args, tag):
    cfg = QUICK if args.quick else FULL
    result = {
        "machine": machine_facts(),
        "mode": "quick" if args.quick else "full",
        "server": {
            "what": "pool.testserver.PhoenixServer (wsproto, one thread per connection)",
            "where": "a separate process (a subprocess of this benchmark), 127.0.0.1, rcvbuf=None "
                     "(kernel default socket buffers)",
        },
        "pool_settings": dict(POOL_SETTINGS),
        "counts": dict(cfg, start_counts=list(cfg["start_counts"])),
        "processes": {"bench_pid": os.getpid(), "tag": tag, "supervisor_pids": [],
                      "hold_pids": []},
    }
    procs = result["processes"]
    server, pools, holds = None, [], []
    t_start = time.monotonic()
    busy0 = cpu_totals()

    def new_hold(n, prefix):
        h = Hold(url, n, f"{tag}:{prefix}", POOL_SETTINGS["heartbeat_interval"])
        holds.append(h)
        procs["hold_pids"].append(h.pid)
        return h

    def new_pool(topics, name, **overrides):
        p, elapsed, joined = start_pool(url, topics, f"{tag}-{name}", **overrides)
        pools.append(p)
        procs["supervisor_pids"].append(p.pid)
        return p, elapsed, joined

    def drop(obj, bag):
        obj.close()
        bag.remove(obj)

    try:
        log("starting the test server in its own process")
        server = subprocess.Popen([sys.executable, "-c", SERVER_CODE, str(os.getpid()), tag],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT,
                                  env=_child_env())
        procs["server_pid"] = server.pid
        url = server.stdout.readline().decode().strip()
        if not url.startswith("ws://"):
            raise RuntimeError("the test server did not start")

        # 1 + 2: round trips on one channel -------------------------------------------------
        log("round trips: starting a one-channel pool")
        topic = "bench:rt"
        p1, t_one, _ = new_pool([topic], "1")
        w_pid = channel_pids(p1)[topic][0]
        run_dir = p1.config.run_dir
        me, srv = os.getpid(), server.pid
        seq = {"pool": [], "plain": [], "pool_cpu": [], "plain_cpu": []}
        pipe = {"pool": [], "plain": [], "pool_cpu": [], "plain_cpu": []}
        n_seq, n_pipe, window = cfg["seq_n"], cfg["inflight_n"], cfg["window"]
        for rep in range(cfg["reps"]):
            log(f"round trips, sequential, rep {rep + 1}/{cfg['reps']}")
            m = CpuMeter(client=me, server=srv)
            seq["plain"].append(plain_sequential(url, n_seq, m))
            seq["plain_cpu"].append(m.used)
            time.sleep(SETTLE)
            m = CpuMeter(client=me, worker=w_pid, server=srv)
            seq["pool"].append(pool_sequential(p1, topic, n_seq, m))
            seq["pool_cpu"].append(m.used)
            time.sleep(SETTLE)
            log(f"round trips, {window} in flight, rep {rep + 1}/{cfg['reps']}")
            m = CpuMeter(client=me, server=srv)
            pipe["plain"].append(plain_pipelined(url, n_pipe, window, m))
            pipe["plain_cpu"].append(m.used)
            time.sleep(SETTLE)
            m = CpuMeter(client=me, worker=w_pid, server=srv)
            pipe["pool"].append(pool_pipelined(run_dir, topic, n_pipe, window, m))
            pipe["pool_cpu"].append(m.used)
            time.sleep(SETTLE)
        log(f"round trips, {window} threads with a pool.Client each")
        m = CpuMeter(client=me, worker=w_pid, server=srv)
        n_thr = cfg["threads_n"] // window * window
        thr = pool_threads(run_dir, topic, n_thr, window, m)
        reps = [n_seq] * cfg["reps"]
        sp, sb = med(seq["pool"]), med(seq["plain"])
        result["round_trips_sequential"] = {
            "what": "push 'echo' -> reply, one at a time, one channel; median of reps",
            "pool": "pool.Client.push (via pool.Pool.push): this process -> unix socket -> worker "
                    "process -> websocket -> server process, and back",
            "baseline": "websocket-client in this process: ws.send(V2 frame), ws.recv() the reply",
            "n": n_seq, "reps": cfg["reps"],
            "pool_per_s": round(sp), "baseline_per_s": round(sb), "ratio": ratio(sp, sb),
            "pool_per_s_best": round(max(seq["pool"])),
            "baseline_per_s_best": round(max(seq["plain"])),
            "ratio_best": ratio(max(seq["pool"]), max(seq["plain"])),
            "pool_us_per_round_trip": round(1e6 / sp, 1),
            "baseline_us_per_round_trip": round(1e6 / sb, 1),
            "added_us_per_round_trip": round(1e6 / sp - 1e6 / sb, 1),
            "pool_cpu_us_per_round_trip": per_op_us(seq["pool_cpu"], reps),
            "baseline_cpu_us_per_round_trip": per_op_us(seq["plain_cpu"], reps),
            "pool_per_s_reps": [round(x) for x in seq["pool"]],
            "baseline_per_s_reps": [round(x) for x in seq["plain"]],
        }
        reps = [n_pipe] * cfg["reps"]
        pp, pb = med(pipe["pool"]), med(pipe["plain"])
        result["round_trips_in_flight"] = {
            "what": f"push 'echo' -> reply with {window} in flight on one channel; median of reps",
            "window": window, "n": n_pipe, "reps": cfg["reps"],
            "pool_method": "pipelined, one thread: the pool's own length-prefixed JSON frames "
                           "(pool.framing, one request id per push) written straight to the "
                           f"worker's unix socket, {window} outstanding; measures the worker and "
                           "the hop, not Python threads",
            "baseline": f"websocket-client in this process, {window} V2 frames outstanding, one "
                        "new frame sent per reply received",
            "pool_per_s": round(pp), "baseline_per_s": round(pb), "ratio": ratio(pp, pb),
            "pool_per_s_best": round(max(pipe["pool"])),
            "baseline_per_s_best": round(max(pipe["plain"])),
            "ratio_best": ratio(max(pipe["pool"]), max(pipe["plain"])),
            "pool_cpu_us_per_round_trip": per_op_us(pipe["pool_cpu"], reps),
            "baseline_cpu_us_per_round_trip": per_op_us(pipe["plain_cpu"], reps),
            "pool_per_s_reps": [round(x) for x in pipe["pool"]],
            "baseline_per_s_reps": [round(x) for x in pipe["plain"]],
            "pool_threads_per_s": round(thr),
            "pool_threads_ratio": ratio(thr, pb),
            "pool_threads_method": f"{window} threads in this process, each with its own "
                                   "pool.Client pushing sequentially: what a threaded caller sees "
                                   "(this process's GIL is part of it)",
            "pool_threads_n": n_thr,
            "pool_threads_cpu_us_per_round_trip": per_op_us([m.used], [n_thr]),
        }
        drop(p1, pools)

        # 3: start and join -----------------------------------------------------------------
        result["start_joined"] = {
            "what": "pool.Pool(url, topics=[...]) until wait_joined() is true (spawns the "
                    "supervisor interpreter, which forks one worker per channel) vs plain "
                    "websocket-client connections connected and joined one after another in "
                    "one process",
            "pool_granularity": "Pool polls wait_joined every ~0.05 s; the supervisor reads acks "
                                "in batches of min(0.25, ack_interval/4) s",
            "pool_1_channel_s": round(t_one, 3),
        }
        big = None
        for n in cfg["start_counts"]:
            log(f"start + join: {n} plain connections (one process)")
            hold = new_hold(n, f"hold{n}:")
            log(f"start + join: a {n}-channel pool")
            topics = [f"bench:{n}:{i}" for i in range(n)]
            p, elapsed, joined = new_pool(topics, str(n))
            result["start_joined"][str(n)] = {
                "channels": n, "pool_s": round(elapsed, 3), "all_joined": joined,
                "baseline_s": round(hold.elapsed, 3), "ratio": ratio(elapsed, hold.elapsed, 2),
                "pool_ms_per_channel": round(1000 * elapsed / n, 2),
                "baseline_ms_per_connection": round(1000 * hold.elapsed / n, 2),
            }
            if n == max(cfg["start_counts"]):
                big = (p, topics, hold)
            else:
                drop(p, pools)
                drop(hold, holds)
        p, topics, hold = big
        n = len(topics)
        lo, hi = (result["start_joined"][str(k)] for k in cfg["start_counts"])
        dn = hi["channels"] - lo["channels"]
        result["start_joined"]["marginal"] = {
            "what": f"ms per channel between the {lo['channels']}- and the {hi['channels']}-"
                    "channel runs (fixed costs cancel out)",
            "pool_ms_per_channel": round(1000 * (hi["pool_s"] - lo["pool_s"]) / dn, 2),
            "baseline_ms_per_connection": round(1000 * (hi["baseline_s"] - lo["baseline_s"]) / dn, 2),
        }

        # 6: idle CPU (the pool and the baseline process idle side by side) ------------------
        time.sleep(0.5)
        status = p.status()
        sup_pid = status["pool"]["pid"]
        worker_pids = [ch["pid"] for ch in status["channels"] if ch["pid"]]
        log(f"idle CPU over {cfg['idle_seconds']} s with {n} channels")
        cpu, window_s = idle_cpu({"supervisor": [sup_pid], "workers": worker_pids,
                                  "baseline": [hold.pid]}, cfg["idle_seconds"])
        pool_total = cpu["supervisor"]["percent_schedstat"] + cpu["workers"]["percent_schedstat"]
        base = cpu["baseline"]["percent_schedstat"]
        result["idle_cpu"] = {
            "what": f"CPU used over {round(window_s, 2)} s of idleness with {n} channels joined, "
                    "in % of one core; *_percent from utime+stime ticks (/proc/PID/stat), "
                    "*_schedstat from /proc/PID/task/*/schedstat (ns)",
            "channels": n, "window_s": round(window_s, 2),
            "supervisor_percent": cpu["supervisor"]["percent_ticks"],
            "supervisor_ticks": cpu["supervisor"]["ticks"],
            "supervisor_percent_schedstat": cpu["supervisor"]["percent_schedstat"],
            "workers_percent_schedstat": cpu["workers"]["percent_schedstat"],
            "workers_ticks": cpu["workers"]["ticks"],
            "pool_total_percent_schedstat": round(pool_total, 4),
            "baseline": f"one process holding {n} plain websocket-client connections, sending a "
                        "heartbeat on each every heartbeat_interval and reading the replies",
            "baseline_percent_schedstat": base,
            "baseline_ticks": cpu["baseline"]["ticks"],
            "ratio_supervisor": ratio(cpu["supervisor"]["percent_schedstat"], base, 2),
            "ratio_pool_total": ratio(pool_total, base, 1),
            "clk_tck": CLK_TCK,
        }

        # 5: memory ---------------------------------------------------------------------
        log("memory: PSS of every worker, the supervisor's RSS, one plain connection's process")
        pss = [x for x in (pss_kib(pid) for pid in worker_pids) if x is not None]
        rss = [x for x in (rss_kib(pid) for pid in worker_pids) if x is not None]
        one = new_hold(1, "one:")
        one_rss, one_pss = rss_kib(one.pid), pss_kib(one.pid)
        hold_rss = rss_kib(hold.pid)
        per_conn = (hold.rss_after - hold.rss_before) / n
        sup_rss, sup_pss = rss_kib(sup_pid), pss_kib(sup_pid)
        pool_per_channel = (sum(pss) + (sup_pss or 0)) / n if pss else None
        result["memory"] = {
            "what": "KiB; PSS from /proc/PID/smaps_rollup, RSS from /proc/PID/status",
            "channels": n,
            "worker_pss_kib_median": med(pss), "worker_pss_kib_mean": round(statistics.mean(pss)),
            "worker_pss_kib_min": min(pss), "worker_pss_kib_max": max(pss),
            "worker_rss_kib_median": med(rss),
            "supervisor_rss_kib": sup_rss, "supervisor_pss_kib": sup_pss,
            "pool_pss_kib_per_channel": round(pool_per_channel) if pool_per_channel else None,
            "baseline": "one plain websocket-client process (python + websocket-client, one "
                        "joined connection, heartbeating)",
            "baseline_rss_kib": one_rss, "baseline_pss_kib": one_pss,
            "ratio_worker_pss_to_baseline_rss": ratio(med(pss), one_rss, 2),
            "ratio_supervisor_rss_to_baseline_rss": ratio(sup_rss, one_rss, 2),
            "baseline_kib_per_connection": round(per_conn, 1) if per_conn is not None else None,
            "baseline_per_connection_how": f"RSS growth of the process that connected and joined "
                                           f"{n} plain connections, / {n}",
            "baseline_rss_kib_holding_all": hold_rss,
            "ratio_pool_per_channel_to_baseline_per_connection": ratio(pool_per_channel, per_conn, 0),
        }
        drop(one, holds)

        # 4: respawn ------------------------------------------------------------------------
        log(f"respawn: SIGKILL {cfg['respawn_samples']} workers, one at a time")
        t0 = time.perf_counter()
        for _ in range(10):
            p.client.raw_status()
        status_ms = (time.perf_counter() - t0) * 100
        k = cfg["respawn_samples"]
        samples, first_seen = respawn_samples(p, topics[:k], k)
        log(f"respawn: SIGKILL {k} more workers, each followed by pushes until one is answered")
        served = respawn_push_samples(p, topics[k:2 * k])
        plain_cj = plain_connect_join(url, cfg["connect_samples"])
        result["respawn"] = {
            "what": "SIGKILL of a worker -> the supervisor's status shows a new pid RUNNING "
                    "(joined); a different channel each sample",
            "channels_in_pool": n,
            "includes_backoff": f"backoff_initial {POOL_SETTINGS['backoff_initial']} s, "
                                "+-20% jitter",
            "status_poll_s": RESPAWN_POLL, "status_call_ms": round(status_ms, 2),
            "supervisor_ack_batch_s": min(0.25, POOL_SETTINGS["ack_interval"] / 4),
            "samples": len(samples),
            "median_s": round(med(samples), 4) if samples else None,
            "max_s": round(max(samples), 4) if samples else None,
            "min_s": round(min(samples), 4) if samples else None,
            "samples_s": [round(x, 4) for x in samples],
            "new_pid_seen_median_s": round(med(first_seen), 4) if first_seen else None,
            "push_served": "SIGKILL of a worker -> a push to its channel answered ok by the "
                           "replacement (a fresh connection to the channel's unix socket and a "
                           "push with a 1 s timeout, retried every ~1 ms); other channels",
            "push_served_median_s": round(med(served), 4) if served else None,
            "push_served_max_s": round(max(served), 4) if served else None,
            "push_served_samples_s": [round(x, 4) for x in served],
            "push_served_ratio": ratio(med(served), med(plain_cj), 1) if served else None,
            "baseline": "one plain websocket-client connect + join in this process (median)",
            "baseline_median_s": round(med(plain_cj), 4),
            "ratio": ratio(med(samples), med(plain_cj), 1) if samples else None,
        }
        drop(p, pools)
        drop(hold, holds)

        # 6b: idle CPU again with the default heartbeat_interval and ack_interval ------------
        log(f"idle CPU with the default heartbeat_interval and ack_interval, {n} channels")
        p, _, _ = new_pool([f"bench:d:{i}" for i in range(n)], "defaults",
                           heartbeat_interval=25.0, ack_interval=1.0)
        time.sleep(0.5)
        status = p.status()
        cpu, window_s = idle_cpu({"supervisor": [status["pool"]["pid"]],
                                  "workers": [ch["pid"] for ch in status["channels"] if ch["pid"]]},
                                 cfg["idle_seconds"])
        result["idle_cpu"]["with_defaults"] = {
            "what": "the same pool figures with heartbeat_interval 25 s and ack_interval 1 s "
                    "(the defaults); no baseline",
            "window_s": round(window_s, 2),
            "supervisor_percent_schedstat": cpu["supervisor"]["percent_schedstat"],
            "workers_percent_schedstat": cpu["workers"]["percent_schedstat"],
            "pool_total_percent_schedstat": round(cpu["supervisor"]["percent_schedstat"] +
                                                  cpu["workers"]["percent_schedstat"], 4),
        }
        drop(p, pools)
    finally:
        for p in list(pools):
            try:
                p.close()
            except Exception as exc:
                log(f"closing a pool failed: {exc!r}")
        for h in holds:
            h.close()
        if server is not None:
            _stop_child(server)
    # every process this run started carries the tag in its command line or title
    deadline = time.monotonic() + 5.0
    while True:
        left = live_tagged(tag)
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    procs["left_over"] = left
    result["machine"]["loadavg_at_end"] = list(os.getloadavg())
    busy1 = cpu_totals()
    result["machine"]["cpu_busy_percent_during_run"] = round(
        100.0 * (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]), 1)
    result["elapsed_s"] = round(time.monotonic() - t_start, 1)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts (< 40 s)")
    parser.add_argument("--out", help="also write the JSON to this file")
    parser.add_argument("--_hold", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--_url", help=argparse.SUPPRESS)
    parser.add_argument("--_prefix", default="bench:hold:", help=argparse.SUPPRESS)
    parser.add_argument("--_heartbeat", type=float, default=5.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._hold is not None:
        return hold_main(args._url, args._hold, args._prefix, args._heartbeat)
    # stdout carries only the JSON: children (server, supervisor, workers) inherit stderr as
    # their stdout, so nothing they print can get into the document
    json_out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    signal.signal(signal.SIGTERM, _on_term)
    tag = f"bench-{os.getpid()}"
    try:
        result = run(args, tag)
    except Interrupted as exc:
        log(f"interrupted ({exc}); cleaned up")
        return 130
    text = json.dumps(result, indent=2)
    json_out.write(text + "\n")
    json_out.flush()
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    if result["processes"]["left_over"]:
        log(f"processes left over: {result['processes']['left_over']}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
