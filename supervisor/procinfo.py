"""Small, never-raising readers of /proc (Linux)."""

import os

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss(pid):
    """Current resident set size in bytes (``/proc/PID/statm``; never ru_maxrss, which is
    inherited across fork and never goes down). None if unreadable."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def wchan(pid):
    """Kernel function the process sleeps in ('0' when running), or None."""
    try:
        with open(f"/proc/{pid}/wchan") as f:
            return f.read().strip() or "0"
    except OSError:
        return None


def proc_state(pid):
    """One-letter state from /proc/PID/stat (R, S, D, T, Z, ...) or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return data[data.rindex(b")") + 2:][:1].decode()
    except (OSError, ValueError):
        return None


def fd_count(pid="self"):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
