"""One way to spread work over Ray actors, in clip-retrieval's shape: a factory of workers, a list of tasks,
retries on lost actors and nodes, results as they come. Extraction, captioning, QA generation and index
building all run through it.

The policy, the same for every caller: a worker gets work only once a probe call has answered, at start and
again after any of its tasks failed. Ray restarts a lost actor (`max_restarts`, on any node with room), so a
probe answering means it is back; one Ray cannot bring back is dropped. A worker whose constructor raised
(a wrong checkpoint on a node, no GPU) is a setup mistake, not a loss: one clear error, at once. A failed
task is retried on whichever worker is free first, up to `Retries.attempts` in all; a task out of attempts
comes back with its last error rather than raising. Every actor is killed when the pool closes, Ctrl-C
included. Workers start lazily, so a pool larger than the cluster has room for still finishes. Workers are
spread over the cluster's nodes (Ray's SPREAD), so losing a node costs as few replicas as can be: Ray's
default packs fractional actors onto the driver's node first.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterable, Iterator, Mapping, TypeVar

import ray
from ray.exceptions import ActorUnavailableError, RayActorError, RayError

from mullama.errors import MullamaError

POLL_SECONDS = 1.0

Task = TypeVar("Task")


@dataclass(frozen=True)
class WorkerFactory:
    """How to start the workers: an actor class and its constructor arguments, the Ray resources of each, and
    how many. `tasks_in_flight` > 1 queues further tasks in each actor, so a model never idles between two."""

    actor: type
    args: tuple[Any, ...] = ()
    count: int = 1
    cpus: float = 1.0
    gpus: float = 0.0
    name_prefix: str = "mullama-worker"
    label: str = "worker"  # what the errors call one: "a Ray {label} actor failed to start"
    tasks_in_flight: int = 1
    max_restarts: int = 2
    ray_options: Mapping[str, Any] = field(default_factory=dict)  # further ray.remote options (concurrency_groups)


@dataclass(frozen=True)
class Retries(Generic[Task]):
    """How often a task is tried, and the caller's two say-sos on a failed attempt: `recover` returns the
    task's result when the lost attempt landed anyway (a commit written before the actor died), else None;
    `renew` gives the retry a new identity (so a zombie attempt never shares its output)."""

    attempts: int = 3
    recover: Callable[[Task], Any] | None = None
    renew: Callable[[Task], Task] | None = None


@dataclass(frozen=True)
class Done(Generic[Task]):
    """One task's end: its result, or the last error once every attempt failed."""

    task: Task
    result: Any = None
    error: BaseException | None = None
    attempts: int = 1
    worker: str = ""


def last_line(error: BaseException) -> str:
    """The last line of a Ray error (the cause: Ray's own lines and the remote traceback come before it)."""
    text = (getattr(error, "error_msg", None) or str(error)).strip()
    return text.splitlines()[-1] if text else type(error).__name__


@dataclass
class _Round(Generic[Task]):
    """The tasks of one `WorkerPool.run`: the lazy source, retries (first in line) and those in flight."""

    fresh: Iterator[Task]
    retries: Retries[Task]
    queued: collections.deque[tuple[Task, int]] = field(default_factory=collections.deque)
    inflight: dict[Any, tuple[str, Task, int]] = field(default_factory=dict)  # ref -> (worker, task, attempt)
    exhausted: bool = False

    def next(self) -> tuple[Task, int] | None:
        """The next (task, attempt): a retry first, else the next fresh task, drawn only now."""
        if self.queued:
            return self.queued.popleft()
        task = None if self.exhausted else next(self.fresh, None)
        self.exhausted = task is None
        return None if task is None else (task, 1)

    def finished(self) -> bool:
        if self.inflight or self.queued:
            return False
        upcoming = self.next()
        if upcoming is not None:
            self.queued.appendleft(upcoming)
        return upcoming is None

    def busy(self, worker: str) -> int:
        return sum(owner == worker for owner, _, _ in self.inflight.values())

    def failed(self, task: Task, attempt: int, error: BaseException, worker: str) -> Done[Task] | None:
        """A failed attempt: done after all if `recover` says so, queued again while attempts are left."""
        result = self.retries.recover(task) if self.retries.recover else None
        if result is not None:
            return Done(task, result, attempts=attempt, worker=worker)
        if attempt < self.retries.attempts:
            self.queued.appendleft((self.retries.renew(task) if self.retries.renew else task, attempt + 1))
            return None
        return Done(task, error=error, attempts=attempt, worker=worker)


class WorkerPool:
    """The workers of one factory, started on entry and killed on exit; `run` spreads tasks over them."""

    def __init__(self, factory: WorkerFactory):
        self.factory = factory
        self.workers: dict[str, Any] = {}  # name -> actor handle, every worker not known to be gone
        self.free: list[str] = []  # one entry per idle task slot of a worker known to be up
        self.probes: dict[Any, str] = {}  # ref -> worker: starting or suspect, no work until it answers
        self.every_actor: list[Any] = []  # dead or alive: close() kills them all

    def __enter__(self) -> WorkerPool:
        factory = self.factory
        options = {"scheduling_strategy": "SPREAD", **factory.ray_options}
        remote = ray.remote(num_cpus=factory.cpus, num_gpus=factory.gpus, max_restarts=factory.max_restarts,
                            **options)(factory.actor)
        try:
            for number in range(factory.count):
                name = f"{factory.name_prefix}-{number}"
                self.workers[name] = remote.options(name=name).remote(*factory.args)
                self.every_actor.append(self.workers[name])
                self._probe(name)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        for handle in self.every_actor:
            ray.kill(handle, no_restart=True)
        self.every_actor.clear()

    def run(self, tasks: Iterable[Task], submit: Callable[[Any, Task], Any], retries: Retries[Task] = Retries(),
            on_poll: Callable[[Mapping[str, Any]], None] | None = None) -> Iterator[Done[Task]]:
        """Yield each task's `Done` as it comes. `submit(actor, task)` starts a task (`actor.method.remote(...)`);
        `tasks` is drawn lazily, a task only when a worker is free; `on_poll(workers)` runs about every second."""
        work = _Round(iter(tasks), retries)
        while True:
            self._hand_out(work, submit)
            if work.finished():
                return
            if on_poll is not None:
                on_poll(self.workers)
            if not work.inflight and not self.probes:
                raise MullamaError(f"every Ray {self.factory.label} actor died; see the Ray logs for why")
            ready, _ = ray.wait([*work.inflight, *self.probes], num_returns=1, timeout=POLL_SECONDS)
            for ref in ready:
                if ref in self.probes:
                    self._settle_probe(ref, work)
                elif (done := self._settle_task(ref, work)) is not None:
                    yield done

    def _hand_out(self, work: _Round[Task], submit: Callable[[Any, Task], Any]) -> None:
        while self.free:
            upcoming = work.next()
            if upcoming is None:
                return
            name = self.free.pop(0)
            work.inflight[submit(self.workers[name], upcoming[0])] = (name, *upcoming)

    def _settle_task(self, ref: Any, work: _Round[Task]) -> Done[Task] | None:
        name, task, attempt = work.inflight.pop(ref)
        try:
            result = ray.get(ref)
        except RayError as error:  # the actor or its node was lost, or the task raised
            self._suspect(name)
            return work.failed(task, attempt, error, name)
        if name in self.workers and name not in self.probes.values():
            self.free.append(name)
        return Done(task, result, attempts=attempt, worker=name)

    def _settle_probe(self, ref: Any, work: _Round[Task]) -> None:
        name = self.probes.pop(ref)
        try:
            ray.get(ref)
        except ActorUnavailableError:  # restarting or unreachable for now: ask again
            self._probe(name)
            return
        except RayActorError as error:
            if error.actor_init_failed:
                raise MullamaError(f"a Ray {self.factory.label} actor failed to start: {last_line(error)}") from None
            self.workers.pop(name, None)  # lost, and Ray could not bring it back
            return
        self.free += [name] * (self.factory.tasks_in_flight - work.busy(name))

    def _suspect(self, name: str) -> None:
        """No more work for `name` until a probe answers (Ray may be restarting it)."""
        self.free = [other for other in self.free if other != name]
        if name in self.workers and name not in self.probes.values():
            self._probe(name)

    def _probe(self, name: str) -> None:
        self.probes[self.workers[name].__ray_ready__.remote()] = name
