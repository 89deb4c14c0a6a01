"""Connecting to Ray, the same way for every command that runs on a cluster (extract, caption, qa generate,
index build, train)."""

from __future__ import annotations

import logging
import os
import sys

import ray

RAY_LOG = "mullama.ray"  # the distributor's lines: tasks redone after a lost node, nodes joining, work per node


def connect(address: str) -> None:
    """Join a cluster ('auto' or an address), or start one on this machine for 'local'; the run's lines on
    where its work went (RAY_LOG) go to stderr from here on.

    A local cluster binds to loopback only and counts at least 2 logical CPUs: on a 2-core machine,
    actors asking for whole CPUs would otherwise leave none for Ray's own tasks and hang.
    """
    show_ray_log()
    if ray.is_initialized():
        return
    if address == "local":
        ray.init(num_cpus=max(2, os.cpu_count() or 2), _node_ip_address="127.0.0.1", include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    else:
        ray.init(address=address, log_to_driver=False, configure_logging=False)


class _Stderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a line comes (a test runner swaps it), not the one at setup."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def show_ray_log() -> None:
    """Print RAY_LOG's lines (info and up) on stderr as they are, once per process."""
    log = logging.getLogger(RAY_LOG)
    if not log.handlers:
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
