"""python -m pool.testserver [--host 127.0.0.1] [--port 4000] [--stall]: run in the foreground."""
import argparse
import signal
import threading

from .server import PhoenixServer
from .stall import StallListener


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m pool.testserver",
        description="Run the Phoenix Channels test server (or the stall listener) until Ctrl-C/SIGTERM.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4000)
    parser.add_argument("--path", default="/socket")
    parser.add_argument("--stall", action="store_true",
                        help="run the stall listener: answer JOINS joins, then never read again")
    parser.add_argument("--joins", type=int, default=1, help="joins the stall listener answers")
    parser.add_argument("--idle-timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    if args.stall:
        server = StallListener(args.host, args.port, joins=args.joins, path=args.path)
    else:
        server = PhoenixServer(args.host, args.port, path=args.path, idle_timeout=args.idle_timeout)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server.start()
    print(server.url, flush=True)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
