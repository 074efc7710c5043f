"""A webhook receiver on loopback for notification tests: records each JSON body posted to it
(a real HTTP server in a thread of the test process; answers 200, or ``status`` when set)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


class Receiver:
    def __init__(self, port: int = 0):
        self.received: list[dict] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if receiver.status == 200:
                    receiver.received.append(json.loads(body))
                self.send_response(receiver.status)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.started = time.monotonic()
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def texts(self) -> list[str]:
        return [m.get("text", "") for m in self.received]

    def mark(self, settle_s: float) -> int:
        """How many messages arrived, once ``settle_s`` passed since the receiver started (what
        waited for a receiver is delivered by then): later ``wait_for(after=...)`` look past it."""
        time.sleep(max(0.0, self.started + settle_s - time.monotonic()))
        return len(self.received)

    def wait_for(self, *needles: str, after: int = 0, timeout: float = 120) -> str:
        """The first message from index ``after`` on whose text holds every needle (polled)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [t for t in self.texts()[after:] if all(n in t for n in needles)]
            if found:
                return found[0]
            time.sleep(1)
        pytest.fail(f"no notification with {needles} within {timeout:g}s; got {self.texts()[-5:]}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
