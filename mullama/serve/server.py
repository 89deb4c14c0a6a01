"""`mullama serve`: load everything once, bind, and run the HTTP API with uvicorn until interrupted."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Callable

import torch
import uvicorn

from mullama.errors import MullamaError
from mullama.runtime import resolve_device
from mullama.serve.app import create_app
from mullama.serve.config import ChatDefaults, ServeConfig
from mullama.serve.engine import BatchEngine
from mullama.serve.metrics import ServerMetrics
from mullama.serve.services.resources import load_resources

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
API_KEY_VARIABLE = "MULLAMA_API_KEY"


@dataclass
class ServeReport:
    notes: list[str] = field(default_factory=list)
    exit_code: int = 0

    def lines(self) -> list[str]:
        return self.notes


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before any model loads: a busy port or a wrong host fails at once."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        raise MullamaError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port or "
                           "--host") from None
    return sock


def run_serve(config: ServeConfig, announce: Callable[[str], None] = print) -> ServeReport:
    api_key = config.api_key or os.environ.get(API_KEY_VARIABLE, "")
    if resolve_device(config.device).type == "cpu":
        # Generation on every core stalls whenever the event loop or a client needs one: on 2 cores, 8 streamed
        # clients got 2.2-2.4x less batched throughput with 2 model threads than with 1 (BENCHMARKS.md, "Serving").
        torch.set_num_threads(config.threads or max(1, len(os.sched_getaffinity(0)) - 1))
    sock = bind(config.host, config.port)
    report = ServeReport()
    try:
        resources = load_resources(config)
        for warning in resources.warnings:
            announce(f"warning: {warning}")
        if config.host not in LOCAL_HOSTS and not api_key:
            announce(f"warning: serving on {config.host} without an API key: anyone who can reach this port may use "
                     f"it (set --api-key or {API_KEY_VARIABLE})")
        metrics = ServerMetrics()
        engine = BatchEngine(resources.model.model, config.max_batch_size, config.batch_wait_ms / 1000,
                             config.max_pending, metrics.batch_size.observe)
        metrics.in_flight.set_function(lambda: engine.pending)
        app = create_app(resources, engine, metrics, ChatDefaults.of(config), api_key, int(config.max_body_mb * 1e6))
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        announce(f"mullama: serving {resources.model.name!r} at http://{shown}:{port}/ (web page at /, OpenAI API at "
                 f"/v1{', API key required' if api_key else ''}); Ctrl-C stops")
        engine.start()
        try:
            uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5)).run(sockets=[sock])
        finally:
            engine.stop()
    finally:
        sock.close()
    report.notes.append("mullama: server stopped")
    return report
