"""A local webhook for the alert tests: a real HTTP server on 127.0.0.1 that records what it is sent."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from pipelines import alert_outbox


class Receiver:
    """A local webhook: records every POSTed JSON body and its headers. It answers ``status``, or
    500 to the first ``fail_first`` POSTs; ``trickle``: it answers one byte every ``trickle``
    seconds (status line included), as a stalled proxy would."""

    def __init__(self, status: int = 200, *, fail_first: int = 0, trickle: float | None = None):
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        self.answers: list[int] = []
        self.status = status
        self.fail_first = fail_first
        self.closing = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                outer.bodies.append(json.loads(self.rfile.read(length)))
                outer.headers.append(dict(self.headers))
                status = 500 if len(outer.answers) < outer.fail_first else outer.status
                outer.answers.append(status)
                if trickle is not None:
                    answer = f"HTTP/1.1 {status} OK\r\nContent-Length: 2\r\n\r\nok".encode()
                    try:
                        for i in range(len(answer)):
                            if outer.closing.is_set():
                                break
                            self.wfile.write(answer[i : i + 1])
                            self.wfile.flush()
                            time.sleep(trickle)
                    except OSError:
                        pass
                    self.close_connection = True
                    return
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T000/B000/XXXXsecretpath"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def delivered(self) -> list[dict]:
        """The bodies the webhook took (answered 2xx)."""
        return [body for body, status in zip(self.bodies, self.answers, strict=False) if 200 <= status < 300]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()
        for worker in list(alert_outbox._abandoned):  # a POST abandoned at its deadline ends with the answer
            worker.join(5)
