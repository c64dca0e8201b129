"""Phoenix wire format and HTTP bits shared by the test server and the stall listener.

Written independently of pool.protocol on purpose: the client is tested against this.
"""
import base64
import json
import select
import socket
import time
from http import HTTPStatus
from urllib.parse import parse_qsl, urlsplit

MAX_HEAD = 65536
TOKEN_PREFIX = "base64url.bearer.phx."


class Malformed(ValueError):
    """A frame from the client that a Phoenix serializer would crash on."""


def encode_json(vsn2, join_ref, ref, topic, event, payload):
    if vsn2:
        msg = [join_ref, ref, topic, event, payload]
    else:  # the V1 encoder never emits join_ref
        msg = {"topic": topic, "event": event, "payload": payload, "ref": ref}
    return json.dumps(msg, separators=(",", ":"), ensure_ascii=False)


def _field(value):
    data = (value or "").encode("utf-8")
    if len(data) > 255:
        raise ValueError(f"binary metadata field over 255 bytes: {value!r:.60}")
    return data


def encode_binary_push(join_ref, topic, event, data):
    fields = [_field(join_ref), _field(topic), _field(event)]
    return bytes([0] + [len(f) for f in fields]) + b"".join(fields) + bytes(data)


def encode_binary_reply(join_ref, ref, topic, status, data):
    fields = [_field(join_ref), _field(ref), _field(topic), _field(status)]
    return bytes([1] + [len(f) for f in fields]) + b"".join(fields) + bytes(data)


def encode_binary_broadcast(topic, event, data):
    fields = [_field(topic), _field(event)]
    return bytes([2] + [len(f) for f in fields]) + b"".join(fields) + bytes(data)


def _message(join_ref, ref, topic, event, payload):
    if not (isinstance(topic, str) and isinstance(event, str)):
        raise Malformed("topic and event must be strings")
    for r in (join_ref, ref):
        if r is not None and not isinstance(r, str):
            raise Malformed("refs must be strings or null")
    return {"join_ref": join_ref, "ref": ref, "topic": topic, "event": event, "payload": payload}


def decode_text(text, vsn2):
    try:
        data = json.loads(text)
    except ValueError:
        raise Malformed("not JSON") from None
    if vsn2:
        if not (isinstance(data, list) and len(data) == 5):
            raise Malformed("V2 frames are 5-element arrays")
        return _message(*data)
    if not (isinstance(data, dict) and {"topic", "event", "payload", "ref"} <= data.keys()):
        raise Malformed("V1 frames are objects with topic, event, payload, ref")
    return _message(data.get("join_ref"), data["ref"], data["topic"], data["event"], data["payload"])


def decode_binary(data):
    """Decode a client->server binary push (kind 0). Empty refs decode as None."""
    data = bytes(data)
    if len(data) < 5 or data[0] != 0:
        raise Malformed("not a binary push frame")
    pos, fields = 5, []
    for size in data[1:5]:
        chunk = data[pos:pos + size]
        if len(chunk) != size:
            raise Malformed("binary frame shorter than its header says")
        try:
            fields.append(chunk.decode("utf-8"))
        except UnicodeDecodeError:
            raise Malformed("binary metadata is not UTF-8") from None
        pos += size
    join_ref, ref, topic, event = fields
    return _message(join_ref or None, ref or None, topic, event, data[pos:])


def decode_token(subprotocols):
    """The auth token from the offered subprotocols; None if absent. Raises ValueError if bad."""
    for proto in subprotocols:
        if proto.startswith(TOKEN_PREFIX):
            b64 = proto[len(TOKEN_PREFIX):]
            return base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4)).decode("utf-8")
    return None


def parse_target(target):
    """(path, params) from a request target; params keep the last value of a repeated key."""
    parts = urlsplit(target)
    return parts.path, dict(parse_qsl(parts.query, keep_blank_values=True))


def request_target(head):
    """The target of the request line, or None if the line is not an HTTP request."""
    line = head.split(b"\r\n", 1)[0].decode("latin-1").split()
    return line[1] if len(line) == 3 and line[2].startswith("HTTP/") else None


def http_response(status):
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return f"HTTP/1.1 {status} {phrase}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".encode()


def wait_readable(sock, timeout):
    """True when sock has data to read (including data already decrypted inside an SSLSocket)."""
    if getattr(sock, "pending", None) and sock.pending():
        return True
    poller = select.poll()  # not select.select: that fails for descriptors >= 1024
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(max(timeout, 0) * 1000))


def read_head(sock, deadline, should_stop, poll=0.1):
    """Read an HTTP request head. Returns (head, rest) or None on EOF, timeout, oversize or stop."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        if should_stop() or len(buf) > MAX_HEAD:
            return None
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        if not wait_readable(sock, min(poll, left)):
            continue
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head + b"\r\n\r\n", rest


def listen_tcp(host, port, rcvbuf, poll):
    """A listening TCP socket. ``rcvbuf`` is set before listen() so accepted sockets inherit it
    and advertise a small window from the SYN-ACK on: with a peer that stops reading, the
    client's send buffer really fills. Accepts time out after ``poll`` so the loop sees stop()."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((host, port))
    sock.listen(128)
    sock.settimeout(poll)
    return sock


def close_listener(sock):
    """Close a listening socket, waking a thread blocked in its accept() at once."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
