"""A Phoenix Channels test server with fault switches, and the stall listener from the seed report.

For tests, the demo and benchmarks only; nothing in the library's production paths imports it.
It does not import the rest of `pool`: it is an independent implementation of the protocol.
See docs/testserver.md.
"""
from .server import Connection, Faults, PhoenixServer
from .stall import StallListener

__all__ = ["Connection", "Faults", "PhoenixServer", "StallListener"]
