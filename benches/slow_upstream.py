"""A destination far away: answers every POST with 200 after DELAY seconds, many at once (a thread
per connection), and reports how many requests it answered on GET.

    .venv/bin/python benches/slow_upstream.py PORT DELAY
"""

from __future__ import annotations

import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    port, delay = int(sys.argv[1]), float(sys.argv[2])
    answered = 0
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body are two writes: without this, Nagle holds the body for the client's
        # delayed ACK (40 ms) and every request looks that much further away.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            nonlocal answered
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            time.sleep(delay)
            with lock:
                answered += 1
            self._reply(b"{}")

        def do_GET(self) -> None:
            self._reply(str(answered).encode())

        def _reply(self, body: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
