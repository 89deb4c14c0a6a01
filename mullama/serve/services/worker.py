"""One thread for work that must not run twice at once (encoding an upload, making music), with a bounded line."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

from mullama.serve.services.errors import Busy

T = TypeVar("T")


class OneWorker:
    """Runs one job at a time on its own thread; at most `limit` callers wait, and more are refused (Busy) at once,
    so that memory and CPU stay bounded and a client learns to retry rather than hang. The count is kept on the
    event loop's thread only, so it needs no lock."""

    def __init__(self, name: str, limit: int, busy: str, param: str | None = None):
        self.thread = ThreadPoolExecutor(1, thread_name_prefix=name)
        self.limit, self.busy, self.param = limit, busy, param
        self.waiting = 0

    async def run(self, work: Callable[..., T], *args: Any) -> T:
        if self.waiting >= self.limit:
            raise Busy(self.busy, self.param)
        self.waiting += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.thread, work, *args)
        finally:
            self.waiting -= 1
