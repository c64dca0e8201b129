"""The `pool` command: `pool start` in the foreground, status, push exit codes, listen, reload,
bad input, SIGKILL of the supervisor, one supervisor per run_dir."""
import json
import signal
import subprocess
import sys
import time

import pytest

from pool import Client
from conftest import alive, wait_until

FAST = """
heartbeat_interval = 0.5
send_timeout = 0.5
connect_timeout = 0.5
push_timeout = 2.0
ack_interval = 0.1
kill_timeout = 0.5
min_uptime = 0.5
backoff_initial = 0.05
shutdown_timeout = 2.0
"""


def write_config(path, url, run_dir, topics, extra=""):
    channels = "".join(f'\n[[channels]]\ntopic = "{t}"\n' for t in topics)
    path.write_text(f'[pool]\nname = "clitest"\nurl = "{url}"\nrun_dir = "{run_dir}"\n{FAST}{extra}\n{channels}')
    return str(path)


def cli(*args, timeout=30, env=None):
    return subprocess.run([sys.executable, "-m", "pool", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


class Started:
    def __init__(self, config, log):
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-m", "pool", "start", "-c", config],
                                     stdout=log, stderr=subprocess.STDOUT)
        self.config = config

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def start_pool(tmp_path):
    started = []

    def start(config):
        s = Started(config, open(tmp_path / f"start{len(started)}.log", "w"))
        started.append(s)
        return s
    yield start
    for s in started:
        s.stop()


@pytest.fixture
def running(server, run_dir, tmp_path, start_pool):
    config = write_config(tmp_path / "pool.toml", server.url, run_dir, ["room:1", "room:2"])
    started = start_pool(config)
    assert Client(run_dir).wait_joined(15), (tmp_path / "start0.log").read_text()
    return config, started


def test_status_table_json_and_check(running):
    config, _ = running
    out = cli("status", "-c", config)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "2/2 joined" in lines[0]
    assert lines[1].split()[:3] == ["TOPIC", "STATE", "WORKER"]
    assert {l.split()[0] for l in lines[2:]} == {"room:1", "room:2"}
    status = json.loads(cli("status", "-c", config, "--json").stdout)
    assert status["pool"]["name"] == "clitest" and len(status["channels"]) == 2
    assert cli("status", "-c", config, "--check").returncode == 0


def test_push_prints_the_reply_and_exit_codes_name_the_outcome(running):
    config, _ = running
    out = cli("push", "-c", config, "room:1", "echo", '{"a": 1}')
    assert (out.returncode, json.loads(out.stdout)) == (0, {"a": 1})
    out = cli("push", "-c", config, "room:1", "error", '{"why": "x"}')
    assert out.returncode == 3 and json.loads(out.stdout)["response"] == {"why": "x"}
    out = cli("push", "-c", config, "room:1", "noreply", "--timeout", "0.3")
    assert out.returncode == 4 and json.loads(out.stdout)["outcome"] == "timeout"
    out = cli("push", "-c", config, "room:9", "echo")
    assert out.returncode == 5 and "unknown topic" in json.loads(out.stdout)["reason"]
    out = cli("push", "-c", config, "room:1", "echo", "{not json")
    assert out.returncode == 2 and "not valid JSON" in out.stderr


def test_listen_prints_json_lines(running, server):
    config, _ = running
    proc = subprocess.Popen([sys.executable, "-m", "pool", "listen", "-c", config, "room:2",
                             "--count", "2", "--timeout", "10"], stdout=subprocess.PIPE, text=True)
    assert server.wait_for(lambda: sum(1 for c in server.connections if "room:2" in c.joined) == 1)
    time.sleep(0.5)  # the listener subscribes asynchronously; broadcasts are not replayed
    server.broadcast("room:2", "a", {"n": 1})
    server.broadcast("room:2", "b", {"n": 2})
    out, _ = proc.communicate(timeout=15)
    lines = [json.loads(l) for l in out.splitlines()]
    assert [(l["event"], l["payload"]) for l in lines] == [("a", {"n": 1}), ("b", {"n": 2})]


def test_sigkill_of_the_supervisor_leaves_no_worker_and_a_restart_works(running, start_pool, run_dir):
    config, started = running
    pids = [c["pid"] for c in Client(run_dir).status()["channels"]]
    started.proc.send_signal(signal.SIGKILL)
    started.proc.wait(5)
    assert wait_until(lambda: not any(alive(p) for p in pids), 1.0), "a worker outlived its supervisor"
    again = start_pool(config)
    assert Client(run_dir).wait_joined(15)
    assert again.proc.poll() is None


def test_a_second_pool_start_on_a_live_run_dir_refuses(running):
    config, _ = running
    out = cli("start", "-c", config, timeout=15)
    assert out.returncode == 1 and "already" in out.stderr.lower(), out.stderr


def test_stop_ends_the_pool_and_status_check_then_says_not_running(running):
    config, started = running
    assert cli("stop", "-c", config).returncode == 0
    assert started.proc.wait(10) == 0
    assert cli("status", "-c", config, "--check").returncode == 2
    assert cli("status", "--run-dir", "/nonexistent/pool", "--check").returncode == 2
    out = cli("push", "-c", config, "room:1", "echo")
    assert out.returncode == 7 and "not running" in out.stderr


def test_sigterm_is_a_graceful_stop(running, server):
    _, started = running
    started.proc.send_signal(signal.SIGTERM)
    assert started.proc.wait(10) == 0
    assert server.wait_for(lambda: server.stats["leaves"] == 2)


def test_reload_adds_and_removes_channels_and_leaves_the_rest(running, server, run_dir, tmp_path):
    config, started = running
    before = {c["topic"]: c["pid"] for c in Client(run_dir).status()["channels"]}
    write_config(tmp_path / "pool.toml", server.url, run_dir, ["room:1", "room:3"])
    assert cli("reload", "-c", config).returncode == 0
    client = Client(run_dir)
    assert wait_until(lambda: sorted(c["topic"] for c in client.status()["channels"]) == ["room:1", "room:3"]
                      and client.wait_joined(0.1), 10)
    after = {c["topic"]: c["pid"] for c in client.status()["channels"]}
    assert after["room:1"] == before["room:1"]
    assert not alive(before["room:2"]) or wait_until(lambda: not alive(before["room:2"]), 5)
    started.proc.send_signal(signal.SIGHUP)  # the same through the signal: nothing changed, nothing restarts
    time.sleep(0.3)
    assert {c["topic"]: c["pid"] for c in client.status()["channels"]} == after


@pytest.mark.parametrize("body,needle", [
    ('[pool]\nurl = "ws://h/socket"\nheartbeat_intervall = 3\n[[channels]]\ntopic = "a"\n', "heartbeat_interval"),
    ('[pool]\nurl = "ws://h/socket"\nsend_timeout = "ten"\n[[channels]]\ntopic = "a"\n', "send_timeout"),
    ('[pool]\nurl = "ws://h/socket"\nack_deadline = 1\n[[channels]]\ntopic = "a"\n', "ack_deadline"),
    ('[pool]\nurl = "ws://h/socket"\n', "channels"),
    ('[pool\nurl = 1', "line"),
])
def test_bad_config_names_the_problem_exits_2_and_starts_nothing(tmp_path, body, needle):
    run_dir = tmp_path / "never"
    path = tmp_path / "bad.toml"
    path.write_text(body.replace('[pool]\n', f'[pool]\nrun_dir = "{run_dir}"\n', 1))
    for command in ("start", "check-config"):
        out = cli(command, "-c", str(path))
        assert out.returncode == 2, out.stderr
        assert needle in out.stderr
    assert not run_dir.exists()


def test_bad_command_line_exits_2(tmp_path):
    assert cli().returncode == 2
    assert cli("frobnicate").returncode == 2
    out = cli("status")
    assert out.returncode == 2 and "-c FILE" in out.stderr
    out = cli("status", "-c", str(tmp_path / "missing.toml"))
    assert out.returncode == 2


def test_check_config_ok(tmp_path, run_dir):
    config = write_config(tmp_path / "pool.toml", "ws://127.0.0.1:1/socket", run_dir, ["a", "b"])
    out = cli("check-config", "-c", config)
    assert out.returncode == 0 and "2 channel(s)" in out.stdout


def test_titles_show_each_role(running):
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    titles = [l for l in out.splitlines() if "[clitest]" in l]
    assert any("pool: supervisor [clitest]" in l for l in titles), titles
    assert any("pool: worker [clitest] room:1 joined" in l for l in titles), titles


def test_status_watch_refreshes_until_interrupted(running):
    config, _ = running
    proc = subprocess.Popen([sys.executable, "-m", "pool", "status", "-c", config, "--watch",
                             "--interval", "0.1"], stdout=subprocess.PIPE, text=True)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 130
    assert out.count("TOPIC") >= 3, out


def test_version():
    out = cli("--version")
    assert out.returncode == 0 and out.stdout.startswith("pool ")
