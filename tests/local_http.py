"""A real HTTP server on localhost whose answers a test writes as one function, for stand-ins
of servers the tests cannot break on demand (a Ray head's job server, a proxy in front of
MLflow). Real clients (Ray's JobSubmissionClient, MLflow's) talk to it over TCP."""

from __future__ import annotations

import http.server
import threading
from typing import Callable

# (method, path, request headers, request body) -> (status, response headers, response body)
Answer = Callable[[str, str, dict, bytes], "tuple[int, dict, bytes]"]
HOP_BY_HOP = ("content-length", "transfer-encoding", "connection", "server", "date")


class LocalServer:
    """Serves ``answer`` on ``url`` (an ephemeral port) from a background thread until ``close``."""

    def __init__(self, answer: Answer):
        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                code, headers, out = answer(self.command, self.path, dict(self.headers.items()), body)
                self.send_response(code)
                for k, v in headers.items():
                    if k.lower() not in HOP_BY_HOP:
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = do_PATCH = do_DELETE = _answer

            def log_message(self, *args):  # quiet
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
