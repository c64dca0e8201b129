"""The Phoenix Channels wire format: V2 JSON arrays, V1 JSON objects, V2 binary frames.

Pure functions and small value types; this module imports nothing else of the project
(except its errors). See ../shared/PROTOCOL.md "Framing" and "Refs".
"""
import json
from dataclasses import dataclass
from typing import Any, Optional

from .errors import ProtocolError

PHOENIX_TOPIC = "phoenix"
HEARTBEAT = "heartbeat"
JOIN = "phx_join"
LEAVE = "phx_leave"
REPLY = "phx_reply"
ERROR = "phx_error"
CLOSE = "phx_close"

V1 = "1.0.0"
V2 = "2.0.0"

KIND_PUSH = 0
KIND_REPLY = 1
KIND_BROADCAST = 2

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


@dataclass(frozen=True)
class Message:
    """One Phoenix message. ``payload`` is decoded JSON, or bytes for a binary frame."""

    topic: str
    event: str
    payload: Any
    ref: Optional[str] = None
    join_ref: Optional[str] = None

    @property
    def is_reply(self):
        return self.event == REPLY

    @property
    def status(self):
        """A reply's status ("ok", "error"), else None."""
        if self.event == REPLY and isinstance(self.payload, dict):
            return self.payload.get("status")
        return None

    @property
    def response(self):
        """A reply's response, else None."""
        if self.event == REPLY and isinstance(self.payload, dict):
            return self.payload.get("response")
        return None


class RefCounter:
    """One counter per connection: "1", "2", ... and back to "0" past ``limit`` (phoenix.js makeRef)."""

    def __init__(self, limit=2**53 - 1):
        self._n = 0
        self._limit = limit

    def next(self):
        self._n = 0 if self._n >= self._limit else self._n + 1
        return str(self._n)


def _check_ref(value, name):
    if value is not None and not isinstance(value, str):
        raise ProtocolError(f"{name} must be a string or null, got {type(value).__name__}")
    return value


def _check_str(value, name):
    if not isinstance(value, str):
        raise ProtocolError(f"{name} must be a string, got {type(value).__name__}")
    return value


class V2Serializer:
    """``[join_ref, ref, topic, event, payload]`` text frames; binary frames with a kind byte."""

    vsn = V2

    def encode(self, msg):
        return self.encode_raw(msg.join_ref, msg.ref, msg.topic, msg.event, _dumps(msg.payload))

    def encode_raw(self, join_ref, ref, topic, event, payload_json):
        """Build a frame around a payload that is already JSON text (the hot path: no re-encoding)."""
        return f"[{_dumps(join_ref)},{_dumps(ref)},{_dumps(topic)},{_dumps(event)},{payload_json}]"

    def encode_binary(self, join_ref, ref, topic, event, data):
        """A client->server binary push: kind 0, four length bytes, the fields, the raw payload."""
        fields = [(join_ref or "").encode(), (ref or "").encode(), topic.encode(), event.encode()]
        for name, field in zip(("join_ref", "ref", "topic", "event"), fields):
            if len(field) > 255:
                raise ProtocolError(f"binary frame {name} is {len(field)} bytes; the limit is 255")
        header = bytes([KIND_PUSH] + [len(f) for f in fields])
        return header + b"".join(fields) + bytes(data)

    def decode(self, data):
        if isinstance(data, (bytes, bytearray, memoryview)):
            return self.decode_binary(bytes(data))
        try:
            arr = json.loads(data)
        except (ValueError, TypeError) as exc:
            raise ProtocolError(f"text frame is not JSON: {exc}") from None
        if not isinstance(arr, list) or len(arr) != 5:
            raise ProtocolError("V2 text frame must be a JSON array of 5 elements")
        join_ref, ref, topic, event, payload = arr
        return Message(
            topic=_check_str(topic, "topic"),
            event=_check_str(event, "event"),
            payload=payload,
            ref=_check_ref(ref, "ref"),
            join_ref=_check_ref(join_ref, "join_ref"),
        )

    def decode_binary(self, data):
        if not data:
            raise ProtocolError("empty binary frame")
        kind = data[0]
        if kind == KIND_PUSH:  # server->client push: no ref
            fields, rest = _split_fields(data, 3)
            join_ref, topic, event = fields
            return Message(topic, event, rest, ref=None, join_ref=join_ref or None)
        if kind == KIND_REPLY:
            fields, rest = _split_fields(data, 4)
            join_ref, ref, topic, status = fields
            return Message(topic, REPLY, {"status": status, "response": rest},
                           ref=ref or None, join_ref=join_ref or None)
        if kind == KIND_BROADCAST:
            fields, rest = _split_fields(data, 2)
            topic, event = fields
            return Message(topic, event, rest)
        raise ProtocolError(f"unknown binary frame kind {kind}")


def _split_fields(data, count):
    header_end = 1 + count
    if len(data) < header_end:
        raise ProtocolError("binary frame shorter than its header")
    sizes = data[1:header_end]
    pos = header_end
    fields = []
    for size in sizes:
        if pos + size > len(data):
            raise ProtocolError("binary frame field runs past the end of the frame")
        try:
            fields.append(data[pos:pos + size].decode("utf-8"))
        except UnicodeDecodeError:
            raise ProtocolError("binary frame field is not UTF-8") from None
        pos += size
    return fields, data[pos:]


class V1Serializer:
    """``{"topic","event","payload","ref","join_ref"}`` objects. The server never sends join_ref
    back on V1, so stale messages cannot be told apart (PROTOCOL.md rule 6)."""

    vsn = V1

    def encode(self, msg):
        return self.encode_raw(msg.join_ref, msg.ref, msg.topic, msg.event, _dumps(msg.payload))

    def encode_raw(self, join_ref, ref, topic, event, payload_json):
        head = f'{{"topic":{_dumps(topic)},"event":{_dumps(event)},"ref":{_dumps(ref)},'
        if join_ref is not None:
            head += f'"join_ref":{_dumps(join_ref)},'
        return f'{head}"payload":{payload_json}}}'

    def encode_binary(self, join_ref, ref, topic, event, data):
        raise ProtocolError("binary payloads need the V2 protocol (vsn 2.0.0)")

    def decode(self, data):
        if isinstance(data, (bytes, bytearray, memoryview)):
            raise ProtocolError("binary frame on a V1 connection")
        try:
            obj = json.loads(data)
        except (ValueError, TypeError) as exc:
            raise ProtocolError(f"text frame is not JSON: {exc}") from None
        if not isinstance(obj, dict) or "topic" not in obj or "event" not in obj:
            raise ProtocolError("V1 text frame must be a JSON object with topic and event")
        return Message(
            topic=_check_str(obj["topic"], "topic"),
            event=_check_str(obj["event"], "event"),
            payload=obj.get("payload"),
            ref=_check_ref(obj.get("ref"), "ref"),
            join_ref=_check_ref(obj.get("join_ref"), "join_ref"),
        )


def serializer_for(vsn):
    """The serializer for a protocol version string ("2.0.0" or "1.0.0")."""
    major = str(vsn).split(".", 1)[0]
    if major == "2":
        return V2Serializer()
    if major == "1":
        return V1Serializer()
    raise ValueError(f"unsupported Phoenix protocol version {vsn!r}; use '2.0.0' or '1.0.0'")


def heartbeat(ref):
    return Message(PHOENIX_TOPIC, HEARTBEAT, {}, ref=ref, join_ref=None)


def dumps(obj):
    """Compact JSON text, the way payloads are written on the wire."""
    return _dumps(obj)
