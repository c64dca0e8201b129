"""The control socket: happy paths, and malformed or hostile clients that must never disturb the loop."""

import json
import os
import socket
import stat
import struct
import subprocess
import threading
import time

import pytest

from supervisor import exitcodes
from supervisor.control import MAX_CLIENTS, MAX_FRAME, request
from supervisor.errors import ControlError, ControlProtocolError, ControlTimeout, ControlUnavailable
from supervisor_fixtures import alive, supervise, wait_until  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(90)


def frame(obj):
    data = json.dumps(obj).encode()
    return struct.pack(">I", len(data)) + data


def read_reply(sock, timeout=5.0):
    """One reply frame, or None if the server closed the connection."""
    sock.settimeout(timeout)
    buf = b""
    while len(buf) < 4 or len(buf) < 4 + struct.unpack(">I", buf[:4])[0]:
        data = sock.recv(65536)
        if not data:
            return None
        buf += data
    n = struct.unpack(">I", buf[:4])[0]
    return json.loads(buf[4:4 + n])


def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    return s


def test_status_restart_dump_reload_stop(supervise):  # noqa: F811
    slots = [{"slot": "a", "mode": "healthy"}, {"slot": "b", "mode": "healthy"}]
    sp = supervise(slots, reload_slots=slots)
    mode = stat.S_IMODE(os.stat(sp.socket_path).st_mode)
    assert mode == 0o600
    assert stat.S_IMODE(os.stat(sp.run_dir).st_mode) == 0o700

    st = sp.status()
    assert st["ok"] is True
    sup = st["supervisor"]
    assert (sup["name"], sup["pid"], sup["state"], sup["slots"], sup["ready"]) == \
        (sp.name, sp.proc.pid, "running", 2, 2)
    assert sup["uptime"] >= 0
    a = st["slots"][0]
    for key in ("slot", "state", "worker_state", "ready", "pid", "restarts", "uptime", "last_ack_age",
                "last_heartbeat_age", "rss", "exit_reasons", "info"):
        assert key in a
    assert a["state"] == "RUNNING" and a["ready"] is True and a["worker_state"] == "joined"
    assert 0 <= a["last_ack_age"] < 1.0 and a["rss"] > 1 << 20 and a["info"] == {"pid": a["pid"]}

    # restart one slot: a new worker, counted as a restart but not as a crash
    mark = sp.mark()
    assert sp.request({"cmd": "restart", "slot": "a"}) == {"ok": True, "restarting": ["a"]}
    ex = sp.wait_event("exited", slot="a", since=mark)
    assert ex["reason"] == "restarted" and not ex["counted"]
    sp.wait_event("ready", slot="a", since=ex["_index"])
    st = sp.slot_status("a")
    assert st["pid"] != a["pid"] and st["restarts"] == 1 and st["crashes"] == 0

    # restart all
    mark = sp.mark()
    assert sp.request({"cmd": "restart", "slot": "all"})["restarting"] == ["a", "b"]
    for s in "ab":
        sp.wait_event("ready", slot=s, since=sp.wait_event("exited", slot=s, since=mark)["_index"])

    # dump: the worker's stack goes to the log, the worker lives on
    pid = sp.slot_status("b")["pid"]
    assert sp.request({"cmd": "dump", "slot": "b"}) == {"ok": True, "pid": pid}
    wait_until(lambda: "in _healthy_loop" in sp.log(), what="the dumped stack in the log")
    assert alive(pid) and sp.slot_status("b")["pid"] == pid

    # reload through the socket
    sp.set_reload([{"slot": "a", "mode": "healthy"}, {"slot": "c", "mode": "healthy"}])
    reply = sp.request({"cmd": "reload"})
    assert reply == {"ok": True, "added": ["c"], "removed": ["b"], "changed": []}
    sp.wait_event("ready", slot="c")

    # stop: the reply arrives, then the supervisor exits 0
    assert sp.request({"cmd": "stop"}) == {"ok": True, "stopping": True}
    assert sp.wait_exit() == exitcodes.OK


def test_bad_requests_get_error_replies(supervise):  # noqa: F811
    sp = supervise([{"slot": "a", "mode": "healthy"}])
    cases = [
        ({"cmd": "frobnicate"}, "unknown cmd"),
        ({"nocmd": 1}, "missing"),
        ({"cmd": 42}, "missing"),
        ({"cmd": "restart"}, "needs \"slot\""),
        ({"cmd": "restart", "slot": ["a"]}, "needs \"slot\""),
        ({"cmd": "restart", "slot": "nope"}, "unknown slot"),
        ({"cmd": "dump", "slot": "nope"}, "unknown slot"),
        ({"cmd": "reload"}, "not configured"),
        ([1, 2, 3], "JSON object"),
        ("status", "JSON object"),
    ]
    s = connect(sp.socket_path)
    for req, err in cases:                      # all on one connection: it stays usable
        s.sendall(frame(req))
        reply = read_reply(s)
        assert reply["ok"] is False and err in reply["error"], (req, reply)
    s.sendall(frame({"cmd": "status"}))
    assert read_reply(s)["ok"] is True
    s.close()
    assert sp.slot_status("a")["restarts"] == 0


def test_hostile_clients_never_disturb_the_loop(supervise):  # noqa: F811
    sp = supervise([{"slot": "a", "mode": "healthy"}, {"slot": "b", "mode": "healthy"}],
                   control_timeout=0.5)
    pids = {s["slot"]: s["pid"] for s in sp.status()["slots"]}

    # oversized frame header: an error reply, then the connection is closed (body never read)
    s = connect(sp.socket_path)
    s.sendall(struct.pack(">I", MAX_FRAME + 1) + b"{")
    reply = read_reply(s)
    assert reply["ok"] is False and "frame length" in reply["error"]
    assert read_reply(s) is None
    s.close()

    # unparseable frames: invalid UTF-8, invalid JSON, zero length
    for body in (struct.pack(">I", 4) + b"\xff\xfe\xfd\xfc", struct.pack(">I", 5) + b"{{{{{",
                 struct.pack(">I", 0)):
        s = connect(sp.socket_path)
        s.sendall(body)
        reply = read_reply(s)
        assert reply["ok"] is False and "bad frame" in reply["error"]
        assert read_reply(s) is None
        s.close()

    # half a frame, then silence: dropped after control_timeout, never waited for
    stalled = connect(sp.socket_path)
    stalled.sendall(struct.pack(">I", 100) + b'{"cmd":')
    t0 = time.monotonic()
    assert sp.request({"cmd": "status"}, timeout=2.0)["ok"]     # served meanwhile, promptly
    assert time.monotonic() - t0 < 0.5
    assert read_reply(stalled, timeout=10.0) is None              # the server hung up on it
    assert time.monotonic() - t0 < 0.5 + 3.0
    stalled.close()

    # connection flood: beyond MAX_CLIENTS a client is refused at once, others still served
    idle = [connect(sp.socket_path) for _ in range(MAX_CLIENTS)]
    extra = connect(sp.socket_path)
    reply = read_reply(extra)
    assert reply == {"ok": False, "error": "too many clients"}
    extra.close()
    for c in idle:
        c.close()
    wait_until(lambda: sp.request({"cmd": "status"})["ok"], what="status after the flood")

    # a client that connects and sends nothing is dropped too
    quiet = connect(sp.socket_path)
    assert read_reply(quiet, timeout=10.0) is None
    quiet.close()

    # the workers never noticed any of it
    st = sp.status()
    assert {s["slot"]: s["pid"] for s in st["slots"]} == pids
    assert not sp.find("kill")
    assert "event=control_bad_frame" in sp.log() and "event=control_client_dropped" in sp.log()
    assert sp.stop() == exitcodes.OK


_PEER_CLIENT = r"""
import json, socket, struct, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(5)
s.connect(sys.argv[1])
data = json.dumps({"cmd": "status"}).encode()
try:
    s.sendall(struct.pack(">I", len(data)) + data)
except OSError:
    pass                 # refused and closed before we sent: the refusal may still be readable
buf = b""
while True:
    try:
        chunk = s.recv(65536)
    except OSError:
        chunk = b""
    if not chunk:
        break
    buf += chunk
    if len(buf) >= 4 and len(buf) >= 4 + struct.unpack(">I", buf[:4])[0]:
        break
if len(buf) < 4:
    print(json.dumps({"closed": True}))
else:
    reply = json.loads(buf[4:4 + struct.unpack(">I", buf[:4])[0]])
    print(json.dumps({"ok": reply.get("ok"), "error": reply.get("error")}))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another uid")
@pytest.mark.parametrize("allowed", [False, True])
def test_peer_uid_is_checked(supervise, allowed):  # noqa: F811
    nobody = 65534
    py = "/usr/bin/python3"
    probe = subprocess.run([py, "-c", "pass"], user=nobody, group=nobody, capture_output=True)
    if probe.returncode != 0:
        pytest.skip("no python runnable as uid 65534")
    sp = supervise([{"slot": "a", "mode": "healthy"}], start=False, socket_group=str(nobody),
                   allowed_uids=[nobody] if allowed else [])
    # let uid 65534 reach the socket through the file system: only the uid check stands between
    os.chmod(sp.dir, 0o711)
    os.mkdir(sp.run_dir, 0o710)
    os.chown(sp.run_dir, -1, nobody)
    sp.start()
    assert stat.S_IMODE(os.stat(sp.socket_path).st_mode) == 0o660
    assert os.stat(sp.socket_path).st_gid == nobody
    out = subprocess.run([py, "-c", _PEER_CLIENT, sp.socket_path], user=nobody, group=nobody,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    if allowed:
        assert result["ok"] is True
    else:
        assert result == {"ok": False, "error": "permission denied"} or result.get("closed")
        assert "event=control_refused uid=65534" in sp.log()
    assert sp.stop() == exitcodes.OK


def test_request_errors_are_clear_and_bounded(tmp_path):
    missing = str(tmp_path / "nope.sock")
    with pytest.raises(ControlUnavailable, match="no supervisor listening"):
        request(missing, {"cmd": "status"}, timeout=1.0)
    # a socket that accepts but never answers: bounded by the timeout
    path = str(tmp_path / "mute.sock")
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mute.bind(path)
    mute.listen(1)
    t0 = time.monotonic()
    with pytest.raises(ControlTimeout):
        request(path, {"cmd": "status"}, timeout=0.3)
    assert time.monotonic() - t0 < 2.0
    mute.close()
    # a peer that answers garbage
    path = str(tmp_path / "garbage.sock")
    bad = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bad.bind(path)
    bad.listen(1)
    conns = []

    def garbage():
        c, _ = bad.accept()
        conns.append(c)
        c.sendall(struct.pack(">I", 3) + b"{{{")

    t = threading.Thread(target=garbage)
    t.start()
    with pytest.raises(ControlProtocolError):
        request(path, {"cmd": "status"}, timeout=3.0)
    t.join()
    for c in conns:
        c.close()
    bad.close()
    assert issubclass(ControlTimeout, ControlError) and issubclass(ControlUnavailable, ControlError)
