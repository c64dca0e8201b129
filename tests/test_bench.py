"""Smoke test for scripts/bench.py: the quick run finishes, prints one JSON document with every
figure and its baseline, and leaves no process behind. No timing assertions beyond positivity."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "scripts", "bench.py")


from conftest import alive  # noqa: E402


def _positive(section, *keys):
    for key in keys:
        value = section[key]
        assert isinstance(value, (int, float)) and not isinstance(value, bool), (key, value)
        assert value > 0, (key, value)


@pytest.mark.timeout(120)
def test_bench_quick_prints_one_json_document_and_cleans_up(tmp_path):
    out_file = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, BENCH, "--quick", "--out", str(out_file)], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=110)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-4000:]
    doc = json.loads(proc.stdout)  # the whole of stdout is one JSON document
    assert json.loads(out_file.read_text()) == doc

    machine = doc["machine"]
    for key in ("nproc", "cpu_model", "kernel", "python", "websocket_client", "date"):
        assert machine[key], key
    assert doc["mode"] == "quick"
    assert "separate process" in doc["server"]["where"]

    seq = doc["round_trips_sequential"]
    _positive(seq, "pool_per_s", "baseline_per_s", "ratio")
    flight = doc["round_trips_in_flight"]
    _positive(flight, "pool_per_s", "baseline_per_s", "ratio", "pool_threads_per_s")
    assert flight["pool_method"] and flight["window"] == 100

    start = doc["start_joined"]
    for n in doc["counts"]["start_counts"]:
        entry = start[str(n)]
        assert entry["all_joined"] is True
        _positive(entry, "pool_s", "baseline_s", "ratio")

    respawn = doc["respawn"]
    assert respawn["samples"] >= 1
    _positive(respawn, "median_s", "max_s", "baseline_median_s", "ratio", "push_served_median_s")

    memory = doc["memory"]
    _positive(memory, "worker_pss_kib_median", "worker_pss_kib_max", "supervisor_rss_kib",
              "baseline_rss_kib", "ratio_worker_pss_to_baseline_rss")

    idle = doc["idle_cpu"]
    assert idle["channels"] == max(doc["counts"]["start_counts"])
    _positive(idle, "window_s", "pool_total_percent_schedstat")
    assert idle["supervisor_percent"] >= 0 and idle["baseline_percent_schedstat"] >= 0

    procs = doc["processes"]
    assert procs["left_over"] == []
    started = [procs["server_pid"], *procs["supervisor_pids"], *procs["hold_pids"]]
    assert len(procs["supervisor_pids"]) == 2 + len(doc["counts"]["start_counts"])
    assert [pid for pid in started if alive(pid)] == []
