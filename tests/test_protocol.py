"""The wire format (PROTOCOL.md "Framing", checklist S1-S8, K2, K4, K11)."""
import json

import pytest
from hypothesis import given, strategies as st

from pool import protocol
from pool.connection import auth_subprotocols, endpoint_url, redact_url
from pool.errors import ProtocolError
from pool.protocol import Message, RefCounter, V1Serializer, V2Serializer

v2 = V2Serializer()
v1 = V1Serializer()


def test_S1_json_encode_general_push():
    msg = Message("t", "e", {"foo": 1}, ref="1", join_ref="0")
    assert v2.encode(msg) == '["0","1","t","e",{"foo":1}]'


def test_S2_json_decode():
    assert v2.decode('["0","1","t","e",{"foo":1}]') == Message("t", "e", {"foo": 1}, "1", "0")


def test_S3_binary_push_encode_with_variable_length_fields():
    assert v2.encode_binary("0", "1", "t", "e", b"\x01\x02") == b"\x00\x01\x01\x01\x01" + b"01te" + b"\x01\x02"
    assert v2.encode_binary("10", "101", "top", "ev", b"x") == b"\x00\x02\x03\x03\x02" + b"10101topev" + b"x"


def test_S4_binary_decode_push_has_no_ref():
    data = b"\x00\x03\x03\x0a" + b"123topevent-name" + b"\x01\x01"
    assert v2.decode(data) == Message("top", "event-name", b"\x01\x01", ref=None, join_ref="123")


def test_S5_binary_decode_reply():
    data = b"\x01\x03\x02\x03\x02" + b"10012topok" + b"\x01\x01"
    msg = v2.decode(data)
    assert msg.event == "phx_reply" and msg.join_ref == "100" and msg.ref == "12"
    assert msg.payload == {"status": "ok", "response": b"\x01\x01"}
    assert msg.status == "ok" and msg.response == b"\x01\x01"


def test_S6_binary_decode_broadcast():
    data = b"\x02\x03\x0a" + b"topevent-name" + b"\x01\x01"
    assert v2.decode(data) == Message("top", "event-name", b"\x01\x01", ref=None, join_ref=None)


def test_S7_lengths_count_utf8_bytes():
    frame = v2.encode_binary("0", "1", "t\u00e9", "\u00e9v\u00e9", b"")
    assert frame[1:5] == bytes([1, 1, 3, 5])
    assert v2.decode_binary(b"\x02\x03\x05" + "t\u00e9".encode() + "\u00e9v\u00e9".encode()).topic == "t\u00e9"


def test_S8_oversized_metadata_raises():
    with pytest.raises(ProtocolError, match="255"):
        v2.encode_binary("0", "1", "x" * 256, "e", b"")
    with pytest.raises(ProtocolError, match="255"):
        v2.encode_binary("0", "1", "t", "\u00e9" * 128, b"")  # 128 chars, 256 bytes
    v2.encode_binary("0", "1", "x" * 255, "e", b"")  # the limit itself is fine


@pytest.mark.parametrize("bad", [
    "not json", '{"topic":"t"}', '[1,2,3]', '["0","1",5,"e",{}]', '["0",1,"t","e",{}]', "",
    b"", b"\x07abc", b"\x00\x05\x01\x01ab", b"\x01\x01\x01\x01\x01\xff\xfe\xfd\xfcok",
])
def test_malformed_frames_raise_protocol_error(bad):
    with pytest.raises(ProtocolError):
        v2.decode(bad)


def test_v1_objects_carry_join_ref_out_and_decode_without_it():
    msg = Message("t", "e", {"a": 1}, ref="2", join_ref="1")
    assert json.loads(v1.encode(msg)) == {"topic": "t", "event": "e", "payload": {"a": 1},
                                          "ref": "2", "join_ref": "1"}
    back = v1.decode('{"topic":"t","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"2"}')
    assert back.join_ref is None and back.status == "ok"
    with pytest.raises(ProtocolError):
        v1.decode('["0","1","t","e",{}]')
    with pytest.raises(ProtocolError):
        v1.decode(b"\x02\x01\x01te")


payloads = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
refs = st.none() | st.text(max_size=12)


@given(topic=st.text(max_size=40), event=st.text(max_size=40), payload=payloads, ref=refs, join_ref=refs)
def test_json_round_trip_and_raw_encoding_agree(topic, event, payload, ref, join_ref):
    for ser in (v1, v2):
        msg = Message(topic, event, payload, ref, join_ref)
        text = ser.encode(msg)
        assert ser.encode_raw(join_ref, ref, topic, event, protocol.dumps(payload)) == text
        back = ser.decode(text)
        assert (back.topic, back.event, back.payload, back.ref) == (topic, event, payload, ref)
        if ser is v2:
            assert back == msg


@given(join_ref=st.text(max_size=20), ref=st.text(min_size=1, max_size=20),
       topic=st.text(max_size=60), status=st.sampled_from(["ok", "error"]), data=st.binary(max_size=64))
def test_binary_reply_decode_matches_fields(join_ref, ref, topic, status, data):
    fields = [f.encode() for f in (join_ref, ref, topic, status)]
    frame = bytes([1] + [len(f) for f in fields]) + b"".join(fields) + data
    msg = v2.decode(frame)
    assert (msg.topic, msg.ref, msg.status, msg.response) == (topic, ref, status, data)
    assert msg.join_ref == (join_ref or None)


def test_K11_refs_count_up_as_strings_and_wrap_to_zero():
    refs = RefCounter(limit=3)
    assert [refs.next() for _ in range(5)] == ["1", "2", "3", "0", "1"]


def test_K2_endpoint_url_appends_websocket_params_then_vsn():
    assert endpoint_url("ws://h:4000/socket", {"token": "abc"}) == \
        "ws://h:4000/socket/websocket?token=abc&vsn=2.0.0"
    assert endpoint_url("wss://h/socket/websocket", None, "1.0.0") == "wss://h/socket/websocket?vsn=1.0.0"
    assert endpoint_url("ws://h/socket", lambda: {"a": "1"}) == "ws://h/socket/websocket?a=1&vsn=2.0.0"
    with pytest.raises(ValueError, match="ws://"):
        endpoint_url("http://h/socket")


def test_redact_url_drops_the_query():
    assert redact_url("ws://h/socket/websocket?token=secret&vsn=2.0.0") == "ws://h/socket/websocket"


def test_K4_auth_token_subprotocols_are_base64url_without_padding():
    assert auth_subprotocols("a?b") == ["phoenix", "base64url.bearer.phx.YT9i"]
    assert auth_subprotocols("ab") == ["phoenix", "base64url.bearer.phx.YWI"]


def test_serializer_for_rejects_unknown_versions():
    assert protocol.serializer_for("2.0.0").vsn == "2.0.0"
    assert protocol.serializer_for("1.0.0").vsn == "1.0.0"
    with pytest.raises(ValueError, match="version"):
        protocol.serializer_for("3.0.0")
