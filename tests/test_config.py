"""pool.config: TOML files, data dicts and keyword arguments -> a validated PoolConfig."""
import os
import ssl
import textwrap

import pytest
from hypothesis import given, settings, strategies as st

import supervisor
from pool import worker
from pool.config import (ChannelConfig, PoolConfig, channel_socket_path, load_config,
                         parse_size)
from pool.errors import ConfigError, PoolError

URL = "ws://localhost:4000/socket"
SECRET = "sekrit-Zq8w-TOKEN-4242"  # recognisable: must never appear in an error message


@pytest.fixture
def write(tmp_path):
    def write(text, name="pool.toml"):
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return str(path)
    return write


@pytest.fixture
def minimal(write):
    return write(f"""
        [pool]
        url = "{URL}"

        [[channels]]
        topic = "room:lobby"
    """)


def error(write_or_none, text=None, **kw):
    """Load and return the ConfigError message (fails the test if loading succeeds)."""
    with pytest.raises(ConfigError) as info:
        if text is None:
            load_config(**kw)
        else:
            load_config(write_or_none(text), **kw)
    return str(info.value)


def pool_toml(extra="", channels='[[channels]]\ntopic = "room:lobby"\n'):
    return f'[pool]\nurl = "{URL}"\n{extra}\n\n{channels}'


# -- minimal file and defaults ------------------------------------------------------------------

def test_minimal_file(minimal, monkeypatch):
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    cfg = load_config(minimal)
    assert isinstance(cfg, PoolConfig)
    assert cfg.source == minimal
    assert cfg.name == "pool"
    assert cfg.url == URL
    assert cfg.run_dir == f"/tmp/pool-{os.getuid()}-pool"
    assert [c.topic for c in cfg.channels] == ["room:lobby"]
    assert isinstance(cfg.channels[0], ChannelConfig)
    assert cfg.log_level == "info" and cfg.log_file is None


def test_every_default(minimal, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/4242")
    cfg = load_config(minimal)
    expected = {
        "name": "pool", "params": None, "vsn": "2.0.0", "run_dir": "/run/user/4242/pool-pool",
        "heartbeat_interval": 25.0, "heartbeat_timeout": 25.0, "send_timeout": 10.0,
        "connect_timeout": 10.0, "push_timeout": 10.0, "join_timeout": 10.0,
        "ack_interval": 1.0, "ack_deadline": 22.0, "liveness": "pipe",
        "memory_limit": 256 * 2**20, "memory_limit_kind": "data", "memory_soft_limit": None,
        "max_age": None, "max_restarts": 5, "restart_window": 60.0, "fatal_retry": 300.0,
        "min_uptime": 10.0, "kill_timeout": 5.0, "shutdown_timeout": 10.0,
        "backoff_initial": 0.5, "backoff_max": 60.0, "push_buffer": 1000, "log_level": "info",
        "log_file": None, "headers": (), "auth_token": None, "ca_certs": None,
        "tls_verify": True, "socket_group": None, "allowed_uids": (),
    }
    for key, value in expected.items():
        assert getattr(cfg, key) == value, key
    ch = cfg.channels[0]
    assert ch.payload == {} and ch.handler is None
    assert (ch.heartbeat_interval, ch.heartbeat_timeout, ch.join_timeout) == (25.0, 25.0, 10.0)
    assert cfg.heartbeat_limit == 25 + 25 + 10 + 2 * 1
    assert cfg.sslopt is None


def test_default_run_dir_uses_name(write, monkeypatch):
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    cfg = load_config(write(pool_toml('name = "chat"')))
    assert cfg.run_dir == f"/tmp/pool-{os.getuid()}-chat"


def test_relative_paths_start_at_the_config_file(write, tmp_path):
    (tmp_path / "ca.pem").write_text("not really a cert")
    cfg = load_config(write(pool_toml('run_dir = "run"\nca_certs = "ca.pem"\nlog_file = "p.log"')))
    assert cfg.run_dir == str(tmp_path / "run")
    assert cfg.ca_certs == str(tmp_path / "ca.pem")
    assert cfg.log_file == str(tmp_path / "p.log")


# -- ack_deadline and the other timing rules -------------------------------------------------------

def test_derived_ack_deadline(write):
    cfg = load_config(write(pool_toml("connect_timeout = 4\nsend_timeout = 3\nack_interval = 0.5")))
    assert cfg.ack_deadline == 4 + 3 + 2 * 0.5
    assert cfg.supervisor_config().ack_deadline == 8.0


def test_derived_ack_deadline_uses_the_slowest_channel(write):
    cfg = load_config(write(pool_toml(channels="""
[[channels]]
topic = "fast"
connect_timeout = 2
send_timeout = 1

[[channels]]
topic = "slow"
connect_timeout = 20
send_timeout = 15
""")))
    assert cfg.ack_deadline == 20 + 15 + 2 * 1.0


def test_explicit_ack_deadline_that_is_safe(write):
    cfg = load_config(write(pool_toml("ack_deadline = 30")))
    assert cfg.ack_deadline == 30.0


def test_unsafe_ack_deadline_names_the_key_minimum_and_fix(write):
    path = write(pool_toml("ack_deadline = 15"))
    msg = error(None, path=path)
    assert path in msg
    assert "[pool] ack_deadline" in msg
    assert "21" in msg  # connect_timeout + send_timeout + ack_interval = 10 + 10 + 1
    assert "raise ack_deadline" in msg


def test_ack_deadline_equal_to_the_minimum_is_rejected(write):
    msg = error(write, pool_toml("ack_deadline = 21"))
    assert "ack_deadline" in msg and "above" in msg


def test_ack_deadline_checked_against_channel_overrides(write):
    msg = error(write, pool_toml("ack_deadline = 25", channels="""
[[channels]]
topic = "a"

[[channels]]
topic = "slow"
connect_timeout = 30
"""))
    assert "ack_deadline" in msg and "41" in msg and "'slow'" in msg


def test_heartbeat_interval_below_server_idle_timeout(write):
    msg = error(write, pool_toml("heartbeat_interval = 60"))
    assert "[pool] heartbeat_interval" in msg and "60" in msg and "idle" in msg
    msg = error(write, pool_toml(channels='[[channels]]\ntopic = "a"\nheartbeat_interval = 75\n'))
    assert "[[channels]] #1 heartbeat_interval" in msg
    assert load_config(write(pool_toml("heartbeat_interval = 59.5"))).heartbeat_interval == 59.5


@pytest.mark.parametrize("key", ["heartbeat_interval", "send_timeout", "connect_timeout",
                                 "push_timeout", "join_timeout", "ack_interval", "kill_timeout",
                                 "shutdown_timeout", "restart_window", "fatal_retry",
                                 "backoff_initial", "heartbeat_timeout", "max_age"])
@pytest.mark.parametrize("value", ["0", "-1"])
def test_non_positive_timeouts(write, key, value):
    msg = error(write, pool_toml(f"{key} = {value}"))
    assert f"[pool] {key}" in msg and "> 0" in msg


def test_backoff_max_not_below_initial(write):
    msg = error(write, pool_toml("backoff_initial = 5\nbackoff_max = 2"))
    assert "backoff_max" in msg


# -- unknown keys, wrong types ----------------------------------------------------------------------

def test_unknown_pool_key_suggests(write):
    path = write(pool_toml("heartbeat_intervl = 20"))
    msg = error(None, path=path)
    assert path in msg and "[pool] heartbeat_intervl" in msg
    assert "did you mean 'heartbeat_interval'?" in msg


def test_unknown_channel_key_suggests(write):
    msg = error(write, pool_toml(channels='[[channels]]\ntopic = "a"\n\n[[channels]]\n'
                                          'topic = "b"\npayloa = {}\n'))
    assert "[[channels]] #2 payloa" in msg and "did you mean 'payload'?" in msg


def test_pool_only_key_in_a_channel(write):
    msg = error(write, pool_toml(channels='[[channels]]\ntopic = "a"\nmemory_limit = "1GiB"\n'))
    assert "[[channels]] #1 memory_limit" in msg and "[pool]" in msg


def test_unknown_top_level_table(write):
    msg = error(write, f'[pool]\nurl = "{URL}"\n\n[[channel]]\ntopic = "a"\n')
    assert "'channel'" in msg and "did you mean 'channels'?" in msg
    msg = error(write, f'url = "{URL}"\n\n[[channels]]\ntopic = "a"\n')
    assert "under the [pool] table" in msg


@pytest.mark.parametrize("line, words", [
    ('send_timeout = "10"', ["[pool] send_timeout", "number", "string"]),
    ('send_timeout = "10s"', ["[pool] send_timeout", "without quotes"]),
    ("send_timeout = true", ["[pool] send_timeout", "boolean"]),
    ("max_restarts = 2.5", ["[pool] max_restarts", "whole number"]),
    ("max_restarts = true", ["[pool] max_restarts", "boolean"]),
    ("push_buffer = -1", ["[pool] push_buffer", ">= 0"]),
    ('tls_verify = "no"', ["[pool] tls_verify", "true or false"]),
    ('liveness = "pipes"', ["[pool] liveness", "did you mean 'pipe'?"]),
    ('vsn = "3.0.0"', ["[pool] vsn", "'2.0.0'"]),
    ("vsn = 2.0", ["[pool] vsn", "quoted"]),
    ('log_level = "verbose"', ["[pool] log_level", "debug, info, warning, error"]),
    ('memory_limit_kind = "rss"', ["[pool] memory_limit_kind", "'data'"]),
    ("url = 42", ["[pool] url", "integer"]),
    ('url = "http://localhost:4000/socket"', ["[pool] url", "ws://", "'http'"]),
    ('name = "my pool/x"', ["[pool] name"]),
    ('allowed_uids = ["www-data"]', ["[pool] allowed_uids", "numeric uids"]),
    ('headers = "X-A: b"', ["[pool] headers", "array"]),
    ('headers = ["no colon here"]', ["[pool] headers[0]", "Name: value"]),
    ("params = 3", ["[pool] params", "table"]),
    ("auth_token = 3", ["[pool] auth_token", "string"]),
    ('ca_certs = "/nonexistent/ca.pem"', ["[pool] ca_certs", "no such file"]),
    ('socket_group = "no-such-group-zz9"', ["[pool] socket_group", "no such group"]),
])
def test_wrong_types_and_values(write, line, words):
    key = line.split(" ")[0]
    # replace the url line when the test is about url
    text = pool_toml(line) if key != "url" else f"[pool]\n{line}\n\n[[channels]]\ntopic = \"a\"\n"
    msg = error(write, text)
    for w in words:
        assert w in msg, (w, msg)


def test_numbers_accept_ints_and_floats(write):
    cfg = load_config(write(pool_toml("send_timeout = 3\nconnect_timeout = 2.5\nmax_restarts = 3.0")))
    assert cfg.send_timeout == 3.0 and isinstance(cfg.send_timeout, float)
    assert cfg.connect_timeout == 2.5
    assert cfg.max_restarts == 3 and isinstance(cfg.max_restarts, int)


def test_choices_and_legal_values(write):
    cfg = load_config(write(pool_toml('vsn = "1.0.0"\nliveness = "file"\nlog_level = "DEBUG"\n'
                                      'memory_limit_kind = "as"\nmin_uptime = 0\nallowed_uids = [0, 33]'
                                      '\nmax_age = 3600')))
    assert (cfg.vsn, cfg.liveness, cfg.log_level, cfg.memory_limit_kind) == \
        ("1.0.0", "file", "debug", "as")
    assert cfg.min_uptime == 0 and cfg.allowed_uids == (0, 33) and cfg.max_age == 3600.0


def test_missing_url_and_missing_channels(write):
    msg = error(write, '[pool]\nname = "x"\n\n[[channels]]\ntopic = "a"\n')
    assert "[pool] url" in msg and "required" in msg
    msg = error(write, f'[pool]\nurl = "{URL}"\n')
    assert "no channels" in msg and "[[channels]]" in msg


def test_topics_must_be_valid_and_unique(write):
    msg = error(write, pool_toml(channels='[[channels]]\ntopic = "a"\n\n[[channels]]\ntopic = "a"\n'))
    assert "[[channels]] #2 topic" in msg and "duplicate" in msg and "'a'" in msg
    msg = error(write, pool_toml(channels='[[channels]]\ntopic = ""\n'))
    assert "[[channels]] #1 topic" in msg and "non-empty" in msg
    msg = error(write, pool_toml(channels='[[channels]]\npayload = {}\n'))
    assert "[[channels]] #1 topic" in msg and "required" in msg
    msg = error(write, pool_toml(channels='[[channels]]\ntopic = 5\n'))
    assert "[[channels]] #1 topic" in msg
    msg = error(write, pool_toml(channels='[[channels]]\ntopic = "phoenix"\n'))
    assert "reserved" in msg


@pytest.mark.parametrize("handler, ok", [
    ("myapp.handlers:on_message", True), ("mod:Cls.method", True), ("m:f", True),
    ("myapp.handlers.on_message", False), (":f", False), ("m:", False), ("a b:c", False),
    ("m:f:g", False),
])
def test_handler_format_only(write, handler, ok):
    text = pool_toml(channels=f'[[channels]]\ntopic = "a"\nhandler = "{handler}"\n')
    if ok:
        assert load_config(write(text)).channels[0].handler == handler  # never imported
    else:
        assert "[[channels]] #1 handler" in error(write, text)


def test_payload_must_be_json(write):
    msg = error(write, pool_toml(channels='[[channels]]\ntopic = "a"\npayload = { at = 1979-05-27 }\n'))
    assert "[[channels]] #1 payload" in msg and "JSON" in msg


# -- sizes ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, value", [
    ("268435456", 256 * 2**20), ('"256MiB"', 256 * 2**20), ('"1GiB"', 2**30), ('"512M"', 512 * 2**20),
    ('"2g"', 2 * 2**30), ('"100MB"', 100 * 10**6), ('"1.5GiB"', 3 * 2**29), ('"65536 k"', 2**26),
    ('"none"', None), ("0", None), ('"None"', None),
])
def test_memory_limit_sizes(write, text, value):
    assert load_config(write(pool_toml(f"memory_limit = {text}"))).memory_limit == value


@pytest.mark.parametrize("text", ['"lots"', '"12XB"', "-5", "true", '"1e9"', "[1]"])
def test_bad_sizes(write, text):
    msg = error(write, pool_toml(f"memory_limit = {text}"))
    assert "[pool] memory_limit" in msg and "MiB" in msg


def test_memory_limit_minimum(write):
    assert "16 MiB" in error(write, pool_toml('memory_limit = "1MiB"'))


def test_soft_limit(write):
    cfg = load_config(write(pool_toml('memory_limit = "1GiB"\nmemory_soft_limit = "800MiB"')))
    assert cfg.memory_soft_limit == 800 * 2**20
    assert cfg.supervisor_config().memory_soft_limit == 800 * 2**20
    msg = error(write, pool_toml('memory_limit = "256MiB"\nmemory_soft_limit = "256MiB"'))
    assert "[pool] memory_soft_limit" in msg and "below memory_limit" in msg
    # without a hard limit, a soft limit alone is fine
    cfg = load_config(write(pool_toml('memory_limit = "none"\nmemory_soft_limit = "2GiB"')))
    assert cfg.memory_limit is None and cfg.memory_soft_limit == 2 * 2**30


def test_parse_size_directly():
    assert parse_size(None) is None and parse_size(0) is None
    assert parse_size("64KiB") == 65536 and parse_size("1kb") == 1000 and parse_size("7B") == 7
    with pytest.raises(ValueError):
        parse_size(True)


# -- ${ENV} --------------------------------------------------------------------------------------

def test_env_interpolation_everywhere(write, monkeypatch):
    monkeypatch.setenv("POOL_HOST", "example.org")
    monkeypatch.setenv("POOL_TOKEN", SECRET)
    monkeypatch.setenv("POOL_ROOM", "lobby")
    cfg = load_config(write(f"""
        [pool]
        url = "wss://${{POOL_HOST}}/socket"
        params = {{ token = "${{POOL_TOKEN}}", literal = "$${{NOT_A_VAR}}", plain = "a$b" }}
        auth_token = "${{POOL_TOKEN}}"
        headers = ["X-Api-Key: ${{POOL_TOKEN}}"]

        [[channels]]
        topic = "room:${{POOL_ROOM}}"
        payload = {{ token = "${{POOL_TOKEN}}", list = ["${{POOL_ROOM}}", 1] }}
    """))
    assert cfg.url == "wss://example.org/socket"
    assert cfg.params == {"token": SECRET, "literal": "${NOT_A_VAR}", "plain": "a$b"}
    assert cfg.auth_token == SECRET and cfg.headers == (f"X-Api-Key: {SECRET}",)
    ch = cfg.channels[0]
    assert ch.topic == "room:lobby"
    assert ch.payload == {"token": SECRET, "list": ["lobby", 1]}
    # secrets stay out of reprs and of the redacted view
    assert SECRET not in repr(cfg) and SECRET not in repr(ch)
    assert SECRET not in str(cfg.redacted())


@pytest.mark.parametrize("line, where", [
    ('params = {{ token = "${{POOL_MISSING_VAR}}", other = "{s}" }}', "[pool] params.token"),
    ('auth_token = "{s}${{POOL_MISSING_VAR}}"', "[pool] auth_token"),
    ('headers = ["X-A: {s}", "X-B: ${{POOL_MISSING_VAR}}"]', "[pool] headers[1]"),
])
def test_missing_env_var_names_key_and_variable_but_no_secret(write, monkeypatch, line, where):
    monkeypatch.delenv("POOL_MISSING_VAR", raising=False)
    msg = error(write, pool_toml(line.format(s=SECRET)))
    assert where in msg and "POOL_MISSING_VAR" in msg and "not set" in msg
    assert SECRET not in msg


def test_missing_env_var_in_url(write, monkeypatch):
    monkeypatch.delenv("POOL_MISSING_VAR", raising=False)
    msg = error(write, '[pool]\nurl = "wss://${POOL_MISSING_VAR}/socket"\n\n'
                       '[[channels]]\ntopic = "a"\n')
    assert "[pool] url" in msg and "POOL_MISSING_VAR" in msg


def test_missing_env_var_in_channel_payload(write, monkeypatch):
    monkeypatch.delenv("POOL_MISSING_VAR", raising=False)
    msg = error(write, pool_toml(channels='[[channels]]\ntopic = "a"\n\n[[channels]]\ntopic = "b"\n'
                                          'payload = { auth = { t = "${POOL_MISSING_VAR}" } }\n'))
    assert "[[channels]] #2 payload.auth.t" in msg and "POOL_MISSING_VAR" in msg


def test_malformed_env_reference(write):
    msg = error(write, pool_toml(f'auth_token = "{SECRET}${{oops"'))
    assert "[pool] auth_token" in msg and "$${" in msg and SECRET not in msg
    msg = error(write, pool_toml(f'auth_token = "{SECRET}${{not-a-name}}"'))
    assert "[pool] auth_token" in msg and SECRET not in msg


def test_secret_values_never_in_type_errors(write, monkeypatch):
    monkeypatch.setenv("POOL_TOKEN", SECRET)
    for line in (f'params = {{ t = ["{SECRET}"] }}', f'headers = ["{SECRET}"]',
                 'headers = ["Bad Name: ${POOL_TOKEN}"]', f'headers = "{SECRET}"',
                 f'params = "{SECRET}"'):
        msg = error(write, pool_toml(line))
        assert SECRET not in msg, msg
    msg = error(write, pool_toml(channels=f'[[channels]]\ntopic = "a"\npayload = {{ t = "{SECRET}", '
                                          f'd = 1979-05-27 }}\n'))
    assert SECRET not in msg


def test_url_query_never_in_errors(write):
    msg = error(write, f'[pool]\nurl = "ws://?token={SECRET}"\n\n[[channels]]\ntopic = "a"\n')
    assert "[pool] url" in msg and SECRET not in msg


# -- per-channel overrides reach the workers -----------------------------------------------------------

def test_channel_overrides_reach_worker_settings(write, tmp_path):
    (tmp_path / "ca.pem").write_text("x")
    cfg = load_config(write(f"""
        [pool]
        url = "{URL}"
        run_dir = "/tmp/pool-t-cfg"
        params = {{ token = "pool-token" }}
        heartbeat_interval = 20
        send_timeout = 4
        push_timeout = 6
        push_buffer = 50
        headers = ["X-Pool: 1"]
        auth_token = "pool-auth"
        ca_certs = "ca.pem"
        tls_verify = false
        allowed_uids = [33]

        [[channels]]
        topic = "plain"

        [[channels]]
        topic = "special"
        url = "wss://other.example/socket"
        params = {{ token = "chan-token" }}
        vsn = "1.0.0"
        heartbeat_interval = 10
        send_timeout = 2
        connect_timeout = 3
        push_timeout = 4
        join_timeout = 7
        push_buffer = 5
        headers = ["X-Chan: 2"]
        auth_token = "chan-auth"
        payload = {{ since = 5 }}
        handler = "myapp.handlers:on_message"
    """))
    plain = cfg.worker_settings(cfg.channels[0])
    assert isinstance(plain, worker.WorkerSettings)
    assert (plain.url, plain.params, plain.vsn) == (URL, {"token": "pool-token"}, "2.0.0")
    assert (plain.heartbeat_interval, plain.heartbeat_timeout, plain.send_timeout) == (20, 20, 4)
    assert (plain.push_timeout, plain.join_timeout, plain.push_buffer) == (6, 6, 50)
    assert plain.headers == ("X-Pool: 1",) and plain.auth_token == "pool-auth"
    assert plain.sslopt is None  # ws:// needs no TLS options
    assert plain.socket_path == channel_socket_path("/tmp/pool-t-cfg", "plain")
    assert plain.socket_mode == 0o600 and plain.allowed_uids == (33,)

    s = cfg.worker_settings("special")
    assert (s.url, s.params, s.vsn) == ("wss://other.example/socket", {"token": "chan-token"}, "1.0.0")
    assert (s.heartbeat_interval, s.heartbeat_timeout) == (10, 10)  # timeout follows its interval
    assert (s.send_timeout, s.connect_timeout, s.push_timeout, s.join_timeout) == (2, 3, 4, 7)
    assert s.push_buffer == 5 and s.headers == ("X-Chan: 2",) and s.auth_token == "chan-auth"
    assert s.sslopt == {"ca_certs": str(tmp_path / "ca.pem"), "cert_reqs": ssl.CERT_NONE,
                        "check_hostname": False}
    spec = cfg.worker_specs()[1]
    assert spec.slot == "special" and spec.target is worker.run_worker
    settings, channels = spec.args
    assert settings == s
    assert channels == [worker.ChannelSpec("special", {"since": 5}, "myapp.handlers:on_message")]
    # the supervisor watches the slowest heartbeat
    assert cfg.heartbeat_limit == 20 + 20 + 4 + 2


def test_explicit_pool_heartbeat_timeout_is_inherited(write):
    cfg = load_config(write(pool_toml("heartbeat_timeout = 8", channels=(
        '[[channels]]\ntopic = "a"\nheartbeat_interval = 10\n'))))
    assert cfg.channels[0].heartbeat_timeout == 8


def test_wss_tls_defaults(write):
    cfg = load_config(write('[pool]\nurl = "wss://example.org/socket"\n\n[[channels]]\ntopic = "a"\n'))
    assert cfg.worker_settings("a").sslopt is None  # verify with the system CAs
    cfg = load_config(write('[pool]\nurl = "wss://example.org/socket"\ntls_verify = false\n\n'
                            '[[channels]]\ntopic = "a"\n'))
    assert cfg.worker_settings("a").sslopt == {"cert_reqs": ssl.CERT_NONE, "check_hostname": False}


def test_socket_group_makes_sockets_group_accessible(write):
    gid = os.getgid()
    cfg = load_config(write(pool_toml(f"socket_group = {gid}")))
    assert cfg.worker_settings("room:lobby").socket_mode == 0o660
    assert cfg.supervisor_config().socket_group == str(gid)


# -- fingerprints -----------------------------------------------------------------------------

def test_fingerprints_stable_across_loads_and_changed_by_a_channel_change(write, tmp_path):
    text = pool_toml(channels='[[channels]]\ntopic = "a"\n\n[[channels]]\ntopic = "b"\n'
                              'payload = { x = 1 }\n')
    first = {s.slot: s.fingerprint for s in load_config(write(text)).worker_specs()}
    again = {s.slot: s.fingerprint for s in load_config(write(text, "copy.toml")).worker_specs()}
    assert first == again and len(set(first.values())) == 2
    assert all(len(f) == 16 for f in first.values())

    changed = text.replace("x = 1", "x = 2")
    after = {s.slot: s.fingerprint for s in load_config(write(changed)).worker_specs()}
    assert after["a"] == first["a"] and after["b"] != first["b"]

    overridden = text.replace('topic = "a"', 'topic = "a"\nsend_timeout = 3')
    after = {s.slot: s.fingerprint for s in load_config(write(overridden)).worker_specs()}
    assert after["a"] != first["a"] and after["b"] == first["b"]

    pool_wide = text.replace("[pool]", "[pool]\npush_timeout = 3")
    after = {s.slot: s.fingerprint for s in load_config(write(pool_wide)).worker_specs()}
    assert after["a"] != first["a"] and after["b"] != first["b"]

    # a supervisor-only key restarts no worker
    sup_only = text.replace("[pool]", "[pool]\nmax_restarts = 9")
    after = {s.slot: s.fingerprint for s in load_config(write(sup_only)).worker_specs()}
    assert after == first


def test_fingerprint_changes_with_a_secret_but_does_not_show_it(write, monkeypatch):
    monkeypatch.setenv("POOL_TOKEN", SECRET)
    text = pool_toml('auth_token = "${POOL_TOKEN}"')
    fp1 = load_config(write(text)).worker_specs()[0].fingerprint
    monkeypatch.setenv("POOL_TOKEN", SECRET + "-rotated")
    fp2 = load_config(write(text)).worker_specs()[0].fingerprint
    assert fp1 != fp2 and SECRET not in fp1


# -- socket paths ---------------------------------------------------------------------------------

def test_channel_socket_path_shape():
    p = channel_socket_path("/run/pool", "room:lobby")
    assert p.startswith("/run/pool/ch-room-lobby-") and p.endswith(".sock")
    assert len(os.path.basename(p)) == len("ch-room-lobby-") + 8 + len(".sock")
    assert channel_socket_path("/run/pool", "room:lobby") == p  # stable
    # topics that slug alike still get distinct paths
    assert channel_socket_path("/r", "a:b") != channel_socket_path("/r", "a/b")
    long = channel_socket_path("/r", "x" * 150)
    assert os.path.basename(long) == "ch-" + "x" * 40 + "-" + long[-13:-5] + ".sock"
    assert channel_socket_path("/r", "!!!").startswith("/r/ch-topic-")
    assert channel_socket_path("/r", "été:ü").startswith("/r/ch-t-")


def test_channel_socket_path_too_long():
    with pytest.raises(ConfigError) as info:
        channel_socket_path("/" + "d" * 80, "room:lobby")
    assert "run_dir" in str(info.value) and "107" in str(info.value)


def test_long_run_dir_rejected_at_load(write, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000000")
    msg = error(write, pool_toml(f'run_dir = "/tmp/{"d" * 90}"'))
    assert "[pool] run_dir" in msg and "107" in msg
    msg = error(write, pool_toml(f'name = "{"n" * 64}"'))  # a derived run_dir that does not fit
    assert "run_dir" in msg and "name" in msg


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=200), min_size=1, max_size=20, unique=True),
       st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=40))
def test_socket_paths_unique_and_short(topics, leaf):
    run_dir = "/run/" + leaf  # at most 45 bytes
    paths = [channel_socket_path(run_dir, t) for t in topics]
    assert len(set(paths)) == len(topics)
    for p in paths:
        assert len(os.fsencode(p)) <= 107
        assert os.path.dirname(p) == run_dir
        assert "/" not in os.path.basename(p) and "\0" not in p


# -- the supervisor config ---------------------------------------------------------------------

def test_supervisor_config_mapping(write):
    cfg = load_config(write(pool_toml("""
name = "chat"
run_dir = "/tmp/pool-t-sup"
ack_interval = 0.5
liveness = "file"
kill_timeout = 3
shutdown_timeout = 7
memory_limit = "512MiB"
memory_limit_kind = "as"
memory_soft_limit = "400MiB"
max_age = 3600
min_uptime = 5
backoff_initial = 1
backoff_max = 30
max_restarts = 3
restart_window = 120
fatal_retry = 600
allowed_uids = [33]
""")))
    sup = cfg.supervisor_config()
    assert isinstance(sup, supervisor.SupervisorConfig)
    expected = dict(name="chat", run_dir="/tmp/pool-t-sup", ack_interval=0.5, ack_deadline=21.0,
                    liveness="file", kill_timeout=3, shutdown_timeout=7,
                    memory_limit=512 * 2**20, memory_limit_kind="as",
                    memory_soft_limit=400 * 2**20, max_age=3600, min_uptime=5,
                    backoff_initial=1, backoff_max=30, max_restarts=3, restart_window=120,
                    fatal_retry=600, allowed_uids=(33,), socket_group=None,
                    control_socket="/tmp/pool-t-sup/supervisor.sock",
                    heartbeat_limit=25 + 25 + 10 + 2 * 0.5)
    for key, value in expected.items():
        assert getattr(sup, key) == value, key


def test_supervisor_errors_become_pool_config_errors(minimal, monkeypatch):
    cfg = load_config(minimal)
    cfg.memory_soft_limit = cfg.memory_limit  # bypassing load_config's own check
    with pytest.raises(ConfigError) as info:
        cfg.supervisor_config()
    assert isinstance(info.value, PoolError) and isinstance(info.value, ValueError)
    assert minimal in str(info.value) and "memory_soft_limit" in str(info.value)
    assert not isinstance(info.value, supervisor.ConfigError)


def test_worker_specs_pass_the_supervisor_checks(minimal):
    from supervisor.config import validate_specs
    specs = load_config(minimal).worker_specs()
    assert validate_specs(specs) == specs


# -- files, syntax, data dicts, keyword overrides ----------------------------------------------

def test_toml_syntax_error_has_line_number(write):
    path = write('[pool]\nurl = "ws://h/socket"\nsend_timeout = = 3\n')
    msg = error(None, path=path)
    assert path in msg and "line 3" in msg and "TOML" in msg


def test_missing_file(tmp_path):
    missing = str(tmp_path / "nope.toml")
    msg = error(None, path=missing)
    assert missing in msg and "no such config file" in msg


def test_directory_instead_of_file(tmp_path):
    assert "directory" in error(None, path=str(tmp_path))


def test_path_and_data_together(minimal):
    assert "not both" in error(None, path=minimal, data={})


def test_data_dict():
    cfg = load_config(data={"pool": {"url": URL, "send_timeout": 4, "heartbeat_timeout": None},
                            "channels": [{"topic": "a", "handler": print},
                                         {"topic": "b", "connect_timeout": None}]})
    assert cfg.source is None and cfg.send_timeout == 4.0
    assert cfg.heartbeat_timeout == 25.0  # None means "not set": derived
    assert cfg.channels[0].handler is print  # a callable is fine from Python
    assert cfg.channels[1].connect_timeout == 10.0
    specs = cfg.worker_specs()
    again = load_config(data={"pool": {"url": URL, "send_timeout": 4},
                              "channels": [{"topic": "a", "handler": print}]})
    assert specs[0].fingerprint == again.worker_specs()[0].fingerprint


def test_data_dict_errors_have_no_file_prefix():
    msg = error(None, data={"pool": {"url": URL, "send_timout": 3}, "channels": [{"topic": "a"}]})
    assert msg.startswith("[pool] send_timout") and "send_timeout" in msg
    assert "must be a dict" in error(None, data=[1])
    assert "[[channels]]" in error(None, data={"pool": {"url": URL}, "channels": {"topic": "a"}})
    assert "[[channels]] #1" in error(None, data={"pool": {"url": URL}, "channels": ["a"]})


def test_keyword_overrides_and_topics(minimal):
    cfg = load_config(url=URL, topics=["a", "b"], send_timeout=2)
    assert cfg.topics == ["a", "b"] and cfg.send_timeout == 2.0
    assert all(c.send_timeout == 2.0 for c in cfg.channels)

    cfg = load_config(minimal, topics=["extra"], send_timeout=3, url=None)
    assert cfg.topics == ["room:lobby", "extra"] and cfg.send_timeout == 3.0
    assert cfg.url == URL  # url=None means "not given": the file's value stands

    assert load_config(minimal, memory_limit=None).memory_limit is None  # None disables
    assert load_config(minimal, memory_limit="1GiB").memory_limit == 2**30

    msg = error(None, path=minimal, send_timout=3)
    assert "keyword argument send_timout" in msg and "did you mean 'send_timeout'?" in msg
    msg = error(None, path=minimal, send_timeout="3")
    assert "keyword argument send_timeout" in msg
    msg = error(None, path=minimal, topics=["room:lobby"])
    assert "duplicate" in msg
    assert "list of topic strings" in error(None, url=URL, topics="room:lobby")
    assert "keyword argument topics" in error(None, url=URL, topics=[""])
    assert "no channels" in error(None, url=URL)


def test_keyword_ack_deadline_checked_too(minimal):
    msg = error(None, path=minimal, ack_deadline=3)
    assert "keyword argument ack_deadline" in msg and "21" in msg


def test_config_error_is_a_pool_error_and_value_error(minimal):
    with pytest.raises(PoolError):
        load_config(minimal, send_timeout=-1)
    with pytest.raises(ValueError):
        load_config(minimal, send_timeout=-1)


def test_secrets_are_not_inherited_by_a_channel_on_another_origin():
    from pool.config import load_config
    cfg = load_config(data={
        "pool": {"url": "wss://a.example/socket", "params": {"token": "T"},
                 "auth_token": "A", "headers": ["X-Key: K"], "run_dir": "/tmp/pool-x"},
        "channels": [
            {"topic": "same"},
            {"topic": "same-origin", "url": "wss://A.example:443/other"},
            {"topic": "other", "url": "wss://b.example/socket"},
            {"topic": "other-port", "url": "wss://a.example:8443/socket"},
            {"topic": "other-own", "url": "ws://b.example/socket", "params": {"token": "B"}},
        ]})
    by = {c.topic: c for c in cfg.channels}
    for topic in ("same", "same-origin"):
        assert (by[topic].params, by[topic].auth_token, tuple(by[topic].headers)) == \
            ({"token": "T"}, "A", ("X-Key: K",))
    for topic in ("other", "other-port"):
        assert (by[topic].params, by[topic].auth_token, tuple(by[topic].headers)) == (None, None, ())
    assert by["other-own"].params == {"token": "B"} and by["other-own"].auth_token is None


def test_max_inflight_reaches_the_worker_and_zero_is_refused():
    from pool.config import load_config
    from pool.errors import ConfigError
    base = {"url": "ws://h/socket", "run_dir": "/tmp/pool-x"}
    cfg = load_config(data={"pool": dict(base, max_inflight=50),
                            "channels": [{"topic": "a"}, {"topic": "b", "max_inflight": 7}]})
    assert [cfg.worker_settings(t).max_inflight for t in ("a", "b")] == [50, 7]
    assert load_config(data={"pool": base, "channels": [{"topic": "a"}]}).worker_settings("a").max_inflight == 10000
    with pytest.raises(ConfigError, match="max_inflight"):
        load_config(data={"pool": dict(base, max_inflight=0), "channels": [{"topic": "a"}]})
