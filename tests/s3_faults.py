"""A fault-injecting HTTP proxy in front of an S3 server (moto's, in the tests), for the object-store faults.

`FaultProxy` forwards every request to the upstream server unchanged, except that a share of the requests
matching a `Fault` (by method and key) is answered the way S3 answers an overloaded prefix: `503 SlowDown`
with S3's XML error body; or is held `delay` seconds before it is forwarded, past the client's read timeout.
Which requests fail is decided per matching request by its number and the seed, so a run with the same
requests fails the same ones. The proxy runs in a thread of the test process: Ray nodes and subprocesses
reach it by its address like any S3 endpoint.
"""

from __future__ import annotations

import http.client
import random
import re
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message><RequestId>FAULTPROXY</RequestId>"
             b"<HostId>fault-proxy</HostId></Error>")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


@dataclass(frozen=True)
class Fault:
    """Which requests misbehave: `slow_down` of them get 503 SlowDown, `delayed` of them wait `delay` seconds
    (shares of the requests whose method is `method`, "" for any, and whose key matches `key`, a regex)."""

    slow_down: float = 0.0
    delayed: float = 0.0
    delay: float = 0.0
    method: str = ""
    key: str = ""
    seed: int = 0

    def matches(self, method: str, key: str) -> bool:
        return (not self.method or method == self.method) and re.search(self.key, key) is not None

    def decide(self, number: int) -> str:
        """"slow_down", "delay" or "forward" for the `number`-th matching request: the same for the same seed."""
        draw = random.Random(f"{self.seed}:{number}").random()
        if draw < self.slow_down:
            return "slow_down"
        return "delay" if draw < self.slow_down + self.delayed else "forward"


class FaultProxy:
    """The proxy server; `fault` may be changed between runs, `counts` tells what it did."""

    def __init__(self, upstream: str, fault: Fault = Fault()):
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.fault = fault
        self.counts: Counter[str] = Counter()  # "slow_down GET", "forward PUT"...
        self._matching = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3-fault-proxy", daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def set(self, fault: Fault) -> None:
        """Misbehave as `fault` says from now on, numbering its matching requests from 0 again."""
        with self._lock:
            self.fault, self._matching = fault, 0
            self.counts.clear()

    def action(self, method: str, key: str) -> str:
        with self._lock:
            fault = self.fault
            if not fault.matches(method, key):
                action = "forward"
            else:
                action = fault.decide(self._matching)
                self._matching += 1
            self.counts[f"{action} {method}"] += 1
        return action

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients pool their connections

            def log_message(self, *args) -> None:  # the test output stays quiet
                pass

            def handle_one(self) -> None:
                body = self._read_body()
                key = urllib.parse.urlsplit(self.path).path
                action = proxy.action(self.command, key)
                if action == "slow_down":
                    self._answer(503, {"Content-Type": "application/xml"}, SLOW_DOWN)
                    return
                if action == "delay":
                    time.sleep(proxy.fault.delay)
                status, headers, answer = self._forward(body)
                self._answer(status, headers, answer)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_one

            def _read_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while size := int(self.rfile.readline().split(b";")[0], 16):
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                        pass
                    return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
                connection = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    headers = {name: value for name, value in self.headers.items() if name.lower() not in HOP_BY_HOP}
                    if body or self.command in ("PUT", "POST"):
                        headers["Content-Length"] = str(len(body))
                    connection.request(self.command, self.path, body=body, headers=headers)
                    response = connection.getresponse()
                    return response.status, response.getheaders(), response.read()
                finally:
                    connection.close()

            def _answer(self, status: int, headers, body: bytes) -> None:
                try:
                    self.send_response(status)
                    items = headers.items() if isinstance(headers, dict) else headers
                    for name, value in items:
                        if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                            self.send_header(name, value)
                    if self.command == "HEAD":  # no body, but the object's length as upstream gave it
                        length = {n.lower(): v for n, v in items}.get("content-length", "0")
                        self.send_header("Content-Length", length)
                        self.end_headers()
                    else:
                        self.send_header("Content-Length", str(len(body)))
                        self.end_headers()
                        self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left meanwhile
                    self.close_connection = True

        return Handler
