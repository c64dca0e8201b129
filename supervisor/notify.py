"""systemd notify protocol without a dependency (``Type=notify``, ``WatchdogSec=``).

``NOTIFY_SOCKET`` may be a path or an abstract socket (``@name``). Every send is a non-blocking
datagram; a failure is logged once and otherwise ignored: systemd being away never stops the pool.
"""

import logging
import os
import socket
import time

log = logging.getLogger("supervisor")


class Notifier:
    def __init__(self, environ=None, clock=time.monotonic):
        env = os.environ if environ is None else environ
        self.clock = clock
        self.address = None
        addr = env.get("NOTIFY_SOCKET", "")
        if addr:
            self.address = "\0" + addr[1:] if addr.startswith("@") else addr
        self.watchdog_interval = None
        usec = env.get("WATCHDOG_USEC", "")
        wpid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not wpid or wpid == str(os.getpid())):
            # ping at a quarter of the watchdog period, never more often than 20 times a second
            self.watchdog_interval = max(0.05, int(usec) / 1e6 / 4)
        self._sock = None
        self._warned = False
        self._next_watchdog = 0.0
        self._last_status = None
        self.ready_sent = False

    @property
    def enabled(self):
        return self.address is not None

    def socket(self):
        return self._sock

    def send(self, message):
        if not self.enabled:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(message.encode(), self.address)
            return True
        except OSError as e:
            if not self._warned:
                self._warned = True
                log.warning("event=notify_failed error=%r", str(e))
            return False

    def ready(self):
        if not self.ready_sent:
            self.ready_sent = True
            self.send("READY=1")

    def status(self, text):
        if text != self._last_status:
            self._last_status = text
            self.send(f"STATUS={text}")

    def stopping(self):
        self.send("STOPPING=1")

    def next_deadline(self):
        return self._next_watchdog if self.watchdog_interval and self.enabled else None

    def watchdog(self):
        """Send WATCHDOG=1 if due (called every loop pass)."""
        if not self.watchdog_interval or not self.enabled:
            return
        now = self.clock()
        if now >= self._next_watchdog:
            self._next_watchdog = now + self.watchdog_interval
            self.send("WATCHDOG=1")

    def close(self):
        if self._sock is not None:
            self._sock.close()
            self._sock = None
