"""pool.contrib.django end to end: the example project in tests/django_project, a Phoenix test
server in this process, `manage.py pool start` as a subprocess (real processes, real sockets).

- a view pushes through pool.contrib.django.client() and returns the reply (Django's test
  runner: chat/tests.py), and again in a child forked after the client was first used;
- an inbound broadcast reaches chat.handlers:store in a worker, which writes a row via the ORM,
  also after the worker was killed and respawned;
- the system check rejects a bad POOL, names the key, and `pool start` refuses to run;
- `manage.py pool status|push|listen|check-config|stop` print what `pool` prints.
"""
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time

import pytest

pytest.importorskip("django")

from pool import Client  # noqa: E402
from pool.testserver import PhoenixServer  # noqa: E402
from conftest import wait_until  # noqa: E402

pytestmark = pytest.mark.timeout(20)

PROJECT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "django_project")


def manage(*args, env, timeout=15):
    return subprocess.run([sys.executable, "manage.py", *args], cwd=PROJECT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def manage_many(commands, env, timeout=15):
    """Run several manage.py commands at once (each is ~0.5 s of Python and Django start-up)."""
    procs = [subprocess.Popen([sys.executable, "manage.py", *args], cwd=PROJECT,
                              env=cmd_env or env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for args, cmd_env in commands]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return results


def rows(db):
    with sqlite3.connect(db, timeout=5) as conn:
        return conn.execute("SELECT topic, event, body FROM chat_message ORDER BY id").fetchall()


class Project:
    def __init__(self, srv, base):
        self.srv = srv
        self.run_dir = os.path.join(base, "run")
        self.db = os.path.join(base, "chat.sqlite3")
        self.log_path = os.path.join(base, "pool.log")
        self.env = dict(os.environ, PHOENIX_URL=srv.url, POOL_RUN_DIR=self.run_dir,
                        CHAT_DB=self.db, PYTHONUNBUFFERED="1")
        self.proc = None

    def log(self):
        with open(self.log_path) as fh:
            return fh.read()

    def start(self):
        migrate = subprocess.Popen([sys.executable, "manage.py", "migrate", "-v", "0"],
                                   cwd=PROJECT, env=self.env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen([sys.executable, "manage.py", "pool", "start"],
                                         cwd=PROJECT, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT)
        out, _ = migrate.communicate(timeout=15)
        assert migrate.returncode == 0, out
        assert Client(self.run_dir).wait_joined(10), self.log()

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        manage("pool", "stop", env=self.env)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture(scope="module")
def project():
    base = tempfile.mkdtemp(prefix="pool-dj-", dir="/tmp")  # short: unix socket paths
    srv = PhoenixServer()
    srv.start()
    proj = Project(srv, base)
    try:
        proj.start()
        yield proj
    finally:
        proj.stop()
        srv.stop()
        shutil.rmtree(base, ignore_errors=True)


def django_test(project, name):
    out = manage("test", f"chat.tests.PushViewTests.{name}", "-v", "2", env=project.env)
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}\n--- pool log ---\n{project.log()}"
    assert "skipped" not in out.stderr, out.stderr
    assert "Ran 1 test" in out.stderr and "OK" in out.stderr, out.stderr


def test_a_view_pushes_through_the_pool_and_returns_the_reply(project):
    django_test(project, "test_view_pushes_and_returns_the_reply")


def test_a_child_forked_after_the_first_push_uses_its_own_client(project):
    django_test(project, "test_a_child_forked_after_first_use_pushes_through_its_own_client")


def test_an_inbound_broadcast_is_stored_through_the_orm_by_the_handler(project):
    srv, db = project.srv, project.db
    before = len(rows(db))
    srv.broadcast("room:lobby", "new_msg", {"body": "hello", "n": 1})
    assert wait_until(lambda: len(rows(db)) == before + 1, 5), project.log()
    assert rows(db)[-1] == ("room:lobby", "new_msg", json.dumps({"body": "hello", "n": 1}))

    # The supervisor (the manage.py process) holds no database connection to hand to a fork.
    sup_fds = [os.readlink(f"/proc/{project.proc.pid}/fd/{fd}")
               for fd in os.listdir(f"/proc/{project.proc.pid}/fd")]
    assert db not in sup_fds

    # A respawned worker (forked again from the supervisor) opens its own connection.
    client = Client(project.run_dir)
    old = {c["topic"]: c["pid"] for c in client.status()["channels"]}["room:lobby"]
    os.kill(old, signal.SIGKILL)

    def respawned():
        ch = {c["topic"]: c for c in client.status()["channels"]}["room:lobby"]
        return ch["pid"] not in (None, old) and ch["state"] == "RUNNING"
    assert wait_until(respawned, 10, 0.05), client.status()
    srv.broadcast("room:lobby", "new_msg", {"body": "again"})
    assert wait_until(lambda: len(rows(db)) == before + 2, 5), project.log()
    assert rows(db)[-1][2] == json.dumps({"body": "again"})
    # room:ops has no handler: nothing stored
    srv.broadcast("room:ops", "new_msg", {"body": "not stored"})
    time.sleep(0.3)
    assert len(rows(db)) == before + 2


def test_status_push_listen_and_check_config_from_the_settings(project):
    status, echo, error, rejected, check, health = manage_many([
        (["pool", "status"], None),
        (["pool", "push", "room:lobby", "echo", '{"a": 1}'], None),
        (["pool", "push", "room:lobby", "error", '{"why": "x"}'], None),
        (["pool", "push", "room:nowhere", "echo"], None),
        (["pool", "check-config"], None),
        (["pool", "status", "--check"], None),
    ], project.env)
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0].startswith("pool chat ") and "2/2 joined" in lines[0], status.stdout
    assert lines[1].split()[:3] == ["TOPIC", "STATE", "WORKER"]
    assert {line.split()[0] for line in lines[2:]} == {"room:lobby", "room:ops"}
    assert (echo.returncode, json.loads(echo.stdout)) == (0, {"a": 1}), echo.stderr
    assert error.returncode == 3 and json.loads(error.stdout)["response"] == {"why": "x"}
    assert rejected.returncode == 5 and "unknown topic" in json.loads(rejected.stdout)["reason"]
    assert check.returncode == 0 and check.stdout.startswith("settings.POOL: ok — pool 'chat'")
    assert health.returncode == 0, health.stderr

    listen = subprocess.Popen([sys.executable, "manage.py", "pool", "listen", "room:ops",
                               "--count", "1", "--timeout", "10"], cwd=PROJECT, env=project.env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while listen.poll() is None and time.monotonic() < deadline:
        project.srv.broadcast("room:ops", "ping", {"n": 1})  # not replayed: repeat until heard
        time.sleep(0.1)
    out, err = listen.communicate(timeout=5)
    assert listen.returncode == 0, err
    line = json.loads(out.splitlines()[0])
    assert (line["topic"], line["event"], line["payload"]) == ("room:ops", "ping", {"n": 1})


def test_pool_stop_through_manage_py_stops_the_supervisor(tmp_path):
    with PhoenixServer() as srv:
        base = tempfile.mkdtemp(prefix="pool-dj-", dir="/tmp")
        proj = Project(srv, base)
        try:
            proj.start()
            out = manage("pool", "stop", env=proj.env)
            assert out.returncode == 0 and "stop requested" in out.stdout, out.stderr
            assert proj.proc.wait(8) == 0, proj.log()
            out, check = manage_many([(["pool", "status"], None),
                                      (["pool", "status", "--check"], None)], proj.env)
            assert out.returncode == 7 and "not running" in out.stderr, out.stderr
            assert check.returncode == 2 and "not running" in check.stderr, check.stderr
            shutil.rmtree(proj.run_dir)
            out, check = manage_many([(["pool", "status"], None),
                                      (["pool", "status", "--check"], None)], proj.env)
            assert out.returncode == 7 and "not running" in out.stderr, out.stderr
            assert check.returncode == 2 and "not running" in check.stderr, check.stderr
        finally:
            proj.stop()
            shutil.rmtree(base, ignore_errors=True)


BAD = {
    "heartbeat": 'POOL = {"pool": dict(POOL["pool"], heartbeat_interval=90), "channels": POOL["channels"]}',
    "typo": 'POOL = {"pool": dict(POOL["pool"], hearbeat_interval=5), "channels": POOL["channels"]}',
    "missing": "del POOL",
    "handler": 'POOL = {"pool": POOL["pool"], "channels": [{"topic": "room:x", "handler": "chat.handlers:nope"}]}',
}
GOOD = {
    "flat": 'POOL = {"url": "${PHOENIX_URL}", "run_dir": BASE_DIR / "run", "channels": [{"topic": "room:x"}]}',
    "file": 'POOL = {"config": __import__("os").environ["POOL_TOML"]}',
}


def test_the_system_check_rejects_a_bad_pool_setting_with_a_clear_message(tmp_path):
    for name, body in {**BAD, **GOOD}.items():
        (tmp_path / f"settings_{name}.py").write_text(f"from project.settings import *  # noqa\n{body}\n")
    toml = tmp_path / "pool.toml"
    toml.write_text('[pool]\nurl = "ws://127.0.0.1:9/socket"\nrun_dir = "/tmp/pool-dj-file"\n'
                    '[[channels]]\ntopic = "room:file"\n')
    env = dict(os.environ, PHOENIX_URL="ws://127.0.0.1:9/socket", POOL_RUN_DIR="/tmp/pool-dj-x",
               PYTHONPATH=os.pathsep.join([str(tmp_path), PROJECT]), POOL_TOML=str(toml),
               CHAT_DB=str(tmp_path / "db.sqlite3"))

    def with_settings(name):
        return dict(env, DJANGO_SETTINGS_MODULE=f"settings_{name}")
    good, heartbeat, typo, missing, handler, start, flat, file = manage_many([
        (["check"], env),
        (["check"], with_settings("heartbeat")),
        (["check"], with_settings("typo")),
        (["check"], with_settings("missing")),
        (["check"], with_settings("handler")),
        (["pool", "start"], with_settings("heartbeat")),
        (["pool", "check-config"], with_settings("flat")),
        (["pool", "check-config"], with_settings("file")),
    ], env)
    assert good.returncode == 0, good.stderr
    assert heartbeat.returncode != 0
    assert "(pool.E001)" in heartbeat.stderr and "[pool] heartbeat_interval: must be below 60" \
        in heartbeat.stderr, heartbeat.stderr
    assert typo.returncode != 0
    assert "(pool.E001)" in typo.stderr and "hearbeat_interval" in typo.stderr \
        and "did you mean 'heartbeat_interval'" in typo.stderr, typo.stderr
    assert missing.returncode != 0 and "(pool.E002) settings.POOL is not set" in missing.stderr
    assert handler.returncode != 0
    assert "(pool.E003) channel 'room:x' handler 'chat.handlers:nope' cannot be imported" \
        in handler.stderr, handler.stderr
    # `pool start` runs the checks first: nothing starts on a bad POOL
    assert start.returncode != 0 and "pool.E001" in start.stderr, start.stderr
    assert not os.path.exists("/tmp/pool-dj-x")
    # the other two forms of POOL
    assert flat.returncode == 0, flat.stderr
    assert "settings.POOL: ok" in flat.stdout and f"run_dir {PROJECT}/run" in flat.stdout
    assert "(pool.W001)" not in flat.stderr  # BASE_DIR / "run" is absolute
    assert file.returncode == 0, file.stderr
    assert f"{toml}: ok" in file.stdout and "run_dir /tmp/pool-dj-file" in file.stdout


def test_plain_pool_start_under_django_settings_runs_orm_handlers(tmp_path):
    base = tempfile.mkdtemp(prefix="pool-dj-", dir="/tmp")
    srv = PhoenixServer().start()
    proc = None
    try:
        run_dir = os.path.join(base, "run")
        db = os.path.join(base, "chat.sqlite3")
        env = dict(os.environ, PHOENIX_URL=srv.url, POOL_RUN_DIR=run_dir, CHAT_DB=db,
                   DJANGO_SETTINGS_MODULE="project.settings",
                   PYTHONPATH=os.pathsep.join([PROJECT, os.environ.get("PYTHONPATH", "")]))
        assert manage("migrate", "-v", "0", env=env).returncode == 0
        config = tmp_path / "pool.toml"
        config.write_text(f'[pool]\nurl = "{srv.url}"\nrun_dir = "{run_dir}"\n'
                          f'[[channels]]\ntopic = "room:lobby"\nhandler = "chat.handlers:store"\n')
        log = open(tmp_path / "pool.log", "w")
        proc = subprocess.Popen([sys.executable, "-m", "pool", "start", "-c", str(config)],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
        assert Client(run_dir).wait_joined(10), (tmp_path / "pool.log").read_text()
        srv.broadcast("room:lobby", "new_msg", {"body": "plain start"})
        assert wait_until(lambda: len(rows(db)) == 1, 5), (tmp_path / "pool.log").read_text()
        assert rows(db)[0][:2] == ("room:lobby", "new_msg")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        srv.stop()
        shutil.rmtree(base, ignore_errors=True)
