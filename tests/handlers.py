"""Handlers the worker tests configure as "module:function" strings."""
import json
import os


def record(message):
    """Append each inbound message as a JSON line to $POOL_TEST_RECORD."""
    with open(os.environ["POOL_TEST_RECORD"], "a") as fh:
        fh.write(json.dumps([message.topic, message.event, message.payload]) + "\n")


def explode(message):
    raise RuntimeError("handler bug")


def exhaust_memory(message):
    raise MemoryError("simulated")


def grow(message):
    """Allocate without bound: the worker's RLIMIT_DATA must stop it."""
    hoard = []
    while True:
        hoard.append(bytearray(8 * 2**20))
