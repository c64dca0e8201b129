"""Liveness acks: the record a worker sends and the two transports (pipe, file).

An ack is a small JSON object ``{"s": state, "r": ready, "h": heartbeat_age, "i": info}``.

* **pipe** (default): the worker writes one line per ack to a non-blocking pipe (a full pipe drops
  the ack, the write never blocks). The supervisor stamps each arrival with its own
  ``time.monotonic()``. EOF means the worker (and everything that inherited its end) is gone.
* **file**: a file on tmpfs, created by the supervisor and unlinked at once; the worker keeps the
  fd (inherited over fork), ``pwrite``s a checksummed record at offset 0 and ``utime``s the fd. The
  supervisor ``fstat``s and ``pread``s it on each sweep and stamps any change (sequence number or
  mtime/ctime) with its own monotonic clock -- wall-clock jumps never cause a false kill.
"""

import json
import os
import struct
import tempfile
import zlib

#: an encoded ack never exceeds this (well under PIPE_BUF, so each pipe write is atomic)
MAX_ACK = 512
_FILE_HDR = struct.Struct(">2sQHI")  # magic, seq, length, crc32
_FILE_MAGIC = b"AK"
_FILE_SIZE = 4096
_READ_CHUNK = 65536
_MAX_LINE = 4096


class AckRecord:
    __slots__ = ("state", "ready", "heartbeat_age", "info")

    def __init__(self, state="", ready=False, heartbeat_age=None, info=None):
        self.state = state
        self.ready = ready
        self.heartbeat_age = heartbeat_age
        self.info = info

    def __repr__(self):
        return (f"AckRecord(state={self.state!r}, ready={self.ready}, "
                f"heartbeat_age={self.heartbeat_age}, info={self.info!r})")


def encode(state, ready=False, heartbeat_age=None, info=None):
    """Encode an ack as compact JSON bytes (no newline), at most MAX_ACK - 1 bytes.
    An oversized ``info`` is replaced by ``{"truncated": true}``; an oversized state is cut."""
    obj = {"s": str(state)[:64], "r": bool(ready)}
    if heartbeat_age is not None:
        obj["h"] = round(float(heartbeat_age), 3)
    if info:
        obj["i"] = info
    try:
        data = json.dumps(obj, separators=(",", ":"), default=str).encode()
    except (TypeError, ValueError):
        data = b""
    if not data or len(data) >= MAX_ACK:
        obj["i"] = {"truncated": True}
        data = json.dumps(obj, separators=(",", ":")).encode()
    return data


def decode(data):
    """Decode one ack; None if it is not a valid ack (garbage is ignored, never fatal)."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(obj, dict):
        return None
    h = obj.get("h")
    if not isinstance(h, (int, float)) or isinstance(h, bool):
        h = None
    info = obj.get("i")
    if not isinstance(info, dict):
        info = None
    return AckRecord(str(obj.get("s", ""))[:64], obj.get("r") is True, h, info)


# ---------------------------------------------------------------- pipe transport

class _FdReader:
    """Owns one file descriptor (``self.fd``) and closes it once."""

    def close(self):
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None


class PipeAckReader(_FdReader):
    """Supervisor side of an ack pipe: bounded reads, keeps only the newest complete record."""

    kind = "pipe"

    def __init__(self, fd):
        self.fd = fd
        self.eof = False
        self._partial = b""
        self._discarding = False

    def fileno(self):
        return self.fd

    def read(self):
        """Read what is available (at most 64 KiB). Return ``(got_ack, newest_record_or_None)``."""
        got = False
        newest = None
        try:
            data = os.read(self.fd, _READ_CHUNK)
        except BlockingIOError:
            return False, None
        except OSError:
            data = b""
        if not data:
            self.eof = True
            return False, None
        buf = self._partial + data
        lines = buf.split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if self._discarding:          # tail of an oversized line
                self._discarding = False
                continue
            got = True                    # any complete line proves the loop turned
            rec = decode(line)
            if rec is not None:
                newest = rec
        if len(self._partial) > _MAX_LINE:
            self._partial = b""
            self._discarding = True
        return got, newest


class PipeAckWriter:
    """Worker side of an ack pipe: a non-blocking write; a full pipe drops the ack."""

    def __init__(self, fd):
        self.fd = fd
        self.broken = False

    def write(self, data):
        try:
            os.write(self.fd, data + b"\n")
        except BlockingIOError:
            pass                       # full pipe: drop; the supervisor is not reading anyway
        except BrokenPipeError:
            self.broken = True         # supervisor gone
        except OSError:
            self.broken = True


def make_pipe():
    """``(reader, writer_fd)``: both ends non-blocking and close-on-exec."""
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    return PipeAckReader(r), w


# ---------------------------------------------------------------- file transport

def fs_type(path):
    """Filesystem type of the mount holding ``path`` (from /proc/self/mounts), or None."""
    path = os.path.realpath(path)
    best, best_type = "", None
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mnt = parts[1].replace("\\040", " ")
                if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                    best, best_type = mnt, parts[2]
    except OSError:
        return None
    return best_type


def is_tmpfs(path):
    return fs_type(path) in ("tmpfs", "ramfs")


def choose_ack_dir(run_dir, ack_dir=None):
    """Where ack files go: ``ack_dir`` if given, else run_dir if it is tmpfs, else /dev/shm.
    Returns None when no tmpfs candidate exists (file liveness is then refused)."""
    candidates = [ack_dir] if ack_dir else [run_dir, "/dev/shm"]
    for d in candidates:
        if d and os.path.isdir(d) and is_tmpfs(d):
            return d
    return None


def encode_file_record(seq, payload):
    hdr = _FILE_HDR.pack(_FILE_MAGIC, seq, len(payload), zlib.crc32(payload))
    return hdr + payload


def decode_file_record(data):
    """``(seq, payload)`` or None for a torn or empty record."""
    if len(data) < _FILE_HDR.size:
        return None
    magic, seq, length, crc = _FILE_HDR.unpack_from(data)
    if magic != _FILE_MAGIC:
        return None
    payload = data[_FILE_HDR.size:_FILE_HDR.size + length]
    if len(payload) != length or zlib.crc32(payload) != crc:
        return None
    return seq, payload


class FileAckReader(_FdReader):
    """Supervisor side of an ack file. ``read()`` detects a change since the last sweep."""

    kind = "file"
    eof = False

    def __init__(self, fd):
        self.fd = fd
        self._last_seq = 0
        self._last_times = None

    def fileno(self):
        return self.fd

    def read(self):
        try:
            st = os.fstat(self.fd)
            data = os.pread(self.fd, _FILE_HDR.size + MAX_ACK, 0)
        except OSError:
            return False, None
        times = (st.st_mtime_ns, st.st_ctime_ns)
        rec = decode_file_record(data)
        if rec is None:   # torn read: try once more
            try:
                rec = decode_file_record(os.pread(self.fd, _FILE_HDR.size + MAX_ACK, 0))
            except OSError:
                rec = None
        changed = False
        newest = None
        if rec is not None and rec[0] != self._last_seq:
            self._last_seq = rec[0]
            changed = True
            newest = decode(rec[1])
        if self._last_times is not None and times != self._last_times:
            changed = True
        self._last_times = times
        return changed, newest


class FileAckWriter:
    """Worker side of an ack file: ``pwrite`` the record, then ``utime`` the fd."""

    broken = False

    def __init__(self, fd):
        self.fd = fd
        self.seq = 0

    def write(self, data):
        self.seq += 1
        try:
            os.pwrite(self.fd, encode_file_record(self.seq, data), 0)
            os.utime(self.fd)
        except OSError:
            pass


def make_file(directory, name="ack"):
    """``(reader, fd)``: a fresh tmpfs file, already unlinked, mode 0600. The same fd is used by the
    worker (inherited over fork) and the supervisor (they share the open file description)."""
    fd, path = tempfile.mkstemp(prefix=f".{name}-", suffix=".ack", dir=directory)
    try:
        os.unlink(path)
        os.ftruncate(fd, _FILE_SIZE)
        os.set_inheritable(fd, False)
    except BaseException:
        os.close(fd)
        raise
    return FileAckReader(fd), fd
