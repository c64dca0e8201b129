"""Production operation: systemd's notify protocol, log files reopened on SIGUSR1, health
checks, and no secret in any log line, process title or status output."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from pool import Client
from conftest import wait_until
from test_cli import FAST, cli

TOKEN = "tok-S3CR3T-8d1f"


def write(tmp_path, url, run_dir, topics=("room:1", "room:2"), extra=""):
    channels = "".join(f'\n[[channels]]\ntopic = "{t}"\n' for t in topics)
    path = tmp_path / "pool.toml"
    path.write_text(f'[pool]\nname = "deploy"\nurl = "{url}"\nrun_dir = "{run_dir}"\n{FAST}{extra}\n{channels}')
    return str(path)


@pytest.fixture
def procs():
    started = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def start(procs, config, env=None, args=(), log=None):
    proc = subprocess.Popen([sys.executable, "-m", "pool", "start", "-c", config, *args],
                            env={**os.environ, **(env or {})}, stdout=log or subprocess.DEVNULL,
                            stderr=subprocess.STDOUT if log else subprocess.DEVNULL)
    procs.append(proc)
    return proc


def test_systemd_notify_ready_status_and_watchdog(server, run_dir, tmp_path, procs):
    notify_path = str(tmp_path / "notify.sock")
    sd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sd.bind(notify_path)
    sd.settimeout(0.5)
    config = write(tmp_path, server.url, run_dir)
    start(procs, config, env={"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "400000"})
    seen = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            seen.append(sd.recv(4096).decode())
        except socket.timeout:
            continue
        if "READY=1" in seen and sum(m == "WATCHDOG=1" for m in seen) >= 3:
            break
    assert "READY=1" in seen, seen
    assert any(m.startswith("STATUS=") for m in seen), seen
    assert sum(m == "WATCHDOG=1" for m in seen) >= 3, seen
    # READY=1 only once the channels are joined
    assert Client(run_dir).status()["pool"]["joined"] == 2


def test_no_secret_in_logs_titles_or_status(server, run_dir, tmp_path, procs):
    log_file = tmp_path / "pool.log"
    extra = (f'params = {{ token = "{TOKEN}" }}\nauth_token = "${{POOL_TEST_TOKEN}}"\n'
             f'headers = ["X-Api-Key: {TOKEN}"]\nlog_level = "debug"\n')
    config = write(tmp_path, server.url, run_dir, extra=extra)
    env = {**os.environ, "POOL_TEST_TOKEN": TOKEN}
    start(procs, config, env={"POOL_TEST_TOKEN": TOKEN}, args=("--log-file", str(log_file)))
    client = Client(run_dir)
    assert client.wait_joined(10)
    assert client.push("room:1", "echo", {"x": 1}) == {"x": 1}
    conn = server.connections[0]
    assert conn.params == {"token": TOKEN} and conn.auth_token == TOKEN  # the secrets were used
    server.faults.reject_upgrade = 403  # failures get logged: they must not leak either
    for c in server.connections:
        c.abort()
    assert wait_until(lambda: "forbidden" in json.dumps(client.status()), 10)
    status_out = cli("status", "-c", config, "--json", env=env).stdout
    table_out = cli("status", "-c", config, env=env).stdout
    titles = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    check = cli("check-config", "-c", config, env=env)
    logs = log_file.read_text()
    assert "connect failed" in logs and "403" in logs and "deploy" in titles  # not empty places
    for name, text in [("log", logs), ("status --json", status_out), ("status", table_out),
                       ("titles", titles), ("check-config", check.stdout + check.stderr)]:
        assert TOKEN not in text, f"the token leaked into {name}"


def test_log_file_is_reopened_on_sigusr1(server, run_dir, tmp_path, procs):
    log_file = tmp_path / "pool.log"
    config = write(tmp_path, server.url, run_dir)
    proc = start(procs, config, args=("--log-file", str(log_file)))
    assert Client(run_dir).wait_joined(10)
    rotated = tmp_path / "pool.log.1"
    os.rename(log_file, rotated)
    proc.send_signal(signal.SIGUSR1)
    assert wait_until(lambda: log_file.exists(), 5), "no new log file after SIGUSR1"
    server.connections[0].abort()  # something to log: the worker reconnects
    assert wait_until(lambda: "connection lost" in log_file.read_text(), 5)
    assert "joined" in rotated.read_text()


def test_status_check_reports_degraded_as_1(server, run_dir, tmp_path, procs):
    config = write(tmp_path, server.url, run_dir, topics=("room:1", "nope:1"))
    start(procs, config)
    client = Client(run_dir)
    assert wait_until(lambda: os.path.exists(os.path.join(run_dir, "supervisor.sock")), 10)
    assert wait_until(lambda: any(c["state"] == "DEGRADED" for c in client.status()["channels"]), 10)
    out = cli("status", "-c", config, "--check")
    assert out.returncode == 1
