"""Client <-> worker frames on the unix sockets in run_dir.

A frame is a 4-byte big-endian length N, then N bytes: a small JSON header object, a newline,
then the body. The body of pushes, replies and messages is the payload's JSON text, kept as
bytes so the worker can place it into the Phoenix frame without decoding and re-encoding it.
"""
import json
import struct
import time
import socket

from .errors import ProtocolError

LENGTH = struct.Struct("!I")
MAX_FRAME = 8 * 2**20


def encode(header, body=b""):
    head = json.dumps(header, separators=(",", ":")).encode()
    if isinstance(body, str):
        body = body.encode()
    return LENGTH.pack(len(head) + 1 + len(body)) + head + b"\n" + body


def decode(frame):
    head, sep, body = frame.partition(b"\n")
    if not sep:
        raise ProtocolError("frame has no header line")
    try:
        header = json.loads(head)
    except ValueError:
        raise ProtocolError("frame header is not JSON") from None
    if not isinstance(header, dict):
        raise ProtocolError("frame header must be a JSON object")
    return header, body


class Reader:
    """Incremental parser: ``feed(bytes)`` then iterate ``frames()`` for (header, body)."""

    def __init__(self, max_frame=MAX_FRAME):
        self.buf = bytearray()
        self.max_frame = max_frame

    def feed(self, data):
        self.buf += data

    def frames(self):
        while len(self.buf) >= 4:
            (size,) = LENGTH.unpack_from(self.buf)
            if size > self.max_frame:
                raise ProtocolError(f"frame of {size} bytes is over the {self.max_frame}-byte limit")
            if len(self.buf) < 4 + size:
                return
            frame = bytes(self.buf[4:4 + size])
            del self.buf[:4 + size]
            yield decode(frame)


def recv_frame(sock, reader, deadline):
    """Blocking read of one frame before ``deadline`` (monotonic). Returns (header, body), or
    None at EOF. Raises socket.timeout when the deadline passes."""
    while True:
        for item in reader.frames():
            return item
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("timed out")
        sock.settimeout(remaining)
        data = sock.recv(65536)
        if not data:
            return None
        reader.feed(data)
