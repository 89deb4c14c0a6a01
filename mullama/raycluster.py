"""Connecting to Ray, the same way for every command that runs on a cluster (extract, caption, qa generate,
index build, train)."""

from __future__ import annotations

import os

import ray


def connect(address: str) -> None:
    """Join a cluster ('auto' or an address), or start one on this machine for 'local'.

    A local cluster binds to loopback only and counts at least 2 logical CPUs: on a 2-core machine,
    actors asking for whole CPUs would otherwise leave none for Ray's own tasks and hang.
    """
    if ray.is_initialized():
        return
    if address == "local":
        ray.init(num_cpus=max(2, os.cpu_count() or 2), _node_ip_address="127.0.0.1", include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    else:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
