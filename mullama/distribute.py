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

A node that joins while tasks remain gets workers of its own (as many as the nodes at start held each, as far
as its CPUs and GPUs allow), pinned to it: a pool sized at start would otherwise leave it idle. The pool says
where its work went on the `mullama.ray` logger: every task redone after its node or actor was lost ("lost
with node X, redone on node Y"), every node that joined, and at the end how many tasks each node completed.
"""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterable, Iterator, Mapping, TypeVar

import ray
from ray.exceptions import ActorUnavailableError, ActorUnschedulableError, RayActorError, RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from mullama.errors import MullamaError

POLL_SECONDS = 1.0
NODE_LOOK_SECONDS = 2.0  # how often the pool looks for nodes that joined (one call to Ray's GCS)
log = logging.getLogger("mullama.ray")  # shown on stderr by mullama/raycluster.py

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
class Lost:
    """An attempt that did not finish: the worker, the Ray node id it ran on ("" if never known), why."""

    worker: str
    node: str
    error: str


@dataclass(frozen=True)
class Done(Generic[Task]):
    """One task's end: its result, or the last error once every attempt failed; the worker and the Ray node id
    of the attempt that ended it, and the attempts lost before that one."""

    task: Task
    result: Any = None
    error: BaseException | None = None
    attempts: int = 1
    worker: str = ""
    node: str = ""
    lost: tuple[Lost, ...] = ()


def last_line(error: BaseException) -> str:
    """The last line of a Ray error (the cause: Ray's own lines and the remote traceback come before it)."""
    text = (getattr(error, "error_msg", None) or str(error)).strip()
    return text.splitlines()[-1] if text else type(error).__name__


def _why(error: BaseException) -> str:
    """A lost attempt's cause, short: the kind of loss for a lost actor or node (Ray's text runs on for a
    paragraph), else the error's last line."""
    return type(error).__name__ if isinstance(error, RayActorError) else last_line(error)


def _node_id(_actor: Any) -> str:
    """Run inside a worker (through `__ray_call__`): the id of the Ray node it lives on."""
    return ray.get_runtime_context().get_node_id()


@dataclass(frozen=True)
class _Try(Generic[Task]):
    """One attempt at a task: its number (1 first) and the attempts lost before it."""

    task: Task
    number: int = 1
    lost: tuple[Lost, ...] = ()


@dataclass
class _Round(Generic[Task]):
    """The tasks of one `WorkerPool.run`: the lazy source, retries (first in line) and those in flight."""

    fresh: Iterator[Task]
    retries: Retries[Task]
    queued: collections.deque[_Try[Task]] = field(default_factory=collections.deque)
    inflight: dict[Any, tuple[str, _Try[Task]]] = field(default_factory=dict)  # ref -> (worker, attempt)
    exhausted: bool = False

    def next(self) -> _Try[Task] | None:
        """The next attempt: a retry first, else the next fresh task, drawn only now."""
        if self.queued:
            return self.queued.popleft()
        task = None if self.exhausted else next(self.fresh, None)
        self.exhausted = task is None
        return None if task is None else _Try(task)

    def remaining(self) -> bool:
        """Whether tasks may still be handed out (retries queued, or the source not yet drawn dry)."""
        return bool(self.queued) or not self.exhausted

    def finished(self) -> bool:
        if self.inflight or self.queued:
            return False
        upcoming = self.next()
        if upcoming is not None:
            self.queued.appendleft(upcoming)
        return upcoming is None

    def busy(self, worker: str) -> int:
        return sum(owner == worker for owner, _ in self.inflight.values())

    def failed(self, attempt: _Try[Task], error: BaseException, worker: str, node: str) -> Done[Task] | None:
        """A failed attempt: done after all if `recover` says so, queued again while attempts are left."""
        task = attempt.task
        result = self.retries.recover(task) if self.retries.recover else None
        if result is not None:
            return Done(task, result, attempts=attempt.number, worker=worker, node=node, lost=attempt.lost)
        if attempt.number < self.retries.attempts:
            lost = (*attempt.lost, Lost(worker, node, _why(error)))
            self.queued.appendleft(_Try(self.retries.renew(task) if self.retries.renew else task, attempt.number + 1,
                                        lost))
            return None
        return Done(task, error=error, attempts=attempt.number, worker=worker, node=node, lost=attempt.lost)


class WorkerPool:
    """The workers of one factory, started on entry and killed on exit; `run` spreads tasks over them."""

    def __init__(self, factory: WorkerFactory):
        self.factory = factory
        self.workers: dict[str, Any] = {}  # name -> actor handle, every worker not known to be gone
        self.free: list[str] = []  # one entry per idle task slot of a worker known to be up
        self.probes: dict[Any, str] = {}  # ref -> worker: starting or suspect, no work until it answers
        self.every_actor: list[Any] = []  # dead or alive: close() kills them all
        self.node_of: dict[str, str] = {}  # worker -> the Ray node id its last probe answered from
        self.node_ips: dict[str, str] = {}  # Ray node id -> its address, for the log lines
        self.seen_nodes: set[str] = set()  # nodes alive at start or seen joining since
        self.per_node = 1  # workers a joining node gets: as many as each node at start held
        self.next_node_look = 0.0
        self.done_on: collections.Counter[str] = collections.Counter()  # Ray node id -> tasks completed there
        self.redone = 0
        self.remote: Any = None

    def __enter__(self) -> WorkerPool:
        factory = self.factory
        options = {"scheduling_strategy": "SPREAD", **factory.ray_options}
        self.remote = ray.remote(num_cpus=factory.cpus, num_gpus=factory.gpus, max_restarts=factory.max_restarts,
                                 **options)(factory.actor)
        try:
            alive = [node for node in self._look_at_nodes() if node["Alive"]]
            self.seen_nodes = {node["NodeID"] for node in alive}
            hosts = sum(self._room(node["Resources"]) > 0 for node in alive)
            self.per_node = max(1, -(-factory.count // max(1, hosts)))
            for _ in range(factory.count):
                self._start()
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
        if self.done_on:
            spread = ", ".join(f"{self._label(node)}: {count}" for node, count in self.done_on.most_common())
            log.info("%s on Ray: %d tasks done on %d node(s) (%s); %d redone after a lost node or actor",
                     self.factory.label, sum(self.done_on.values()), len(self.done_on), spread, self.redone)
            self.done_on.clear()

    def run(self, tasks: Iterable[Task], submit: Callable[[Any, Task], Any], retries: Retries[Task] = Retries(),
            on_poll: Callable[[Mapping[str, Any]], None] | None = None,
            describe: Callable[[Task], str] = lambda task: f"task {task}") -> Iterator[Done[Task]]:
        """Yield each task's `Done` as it comes. `submit(actor, task)` starts a task (`actor.method.remote(...)`);
        `tasks` is drawn lazily, a task only when a worker is free; `on_poll(workers)` runs about every second;
        `describe(task)` names a task in the log lines."""
        work = _Round(iter(tasks), retries)
        while True:
            self._hand_out(work, submit)
            if work.finished():
                return
            self._welcome_new_nodes(work)
            if on_poll is not None:
                on_poll(self.workers)
            if not work.inflight and not self.probes:
                raise MullamaError(f"every Ray {self.factory.label} actor died; see the Ray logs for why")
            ready, _ = ray.wait([*work.inflight, *self.probes], num_returns=1, timeout=POLL_SECONDS)
            for ref in ready:
                if ref in self.probes:
                    self._settle_probe(ref, work)
                elif (done := self._settle_task(ref, work)) is not None:
                    self._account(done, describe)
                    yield done

    def _hand_out(self, work: _Round[Task], submit: Callable[[Any, Task], Any]) -> None:
        while self.free:
            upcoming = work.next()
            if upcoming is None:
                return
            name = self.free.pop(0)
            work.inflight[submit(self.workers[name], upcoming.task)] = (name, upcoming)

    def _settle_task(self, ref: Any, work: _Round[Task]) -> Done[Task] | None:
        name, attempt = work.inflight.pop(ref)
        node = self.node_of.get(name, "")
        try:
            result = ray.get(ref)
        except RayError as error:  # the actor or its node was lost, or the task raised
            self._suspect(name)
            return work.failed(attempt, error, name, node)
        if name in self.workers and name not in self.probes.values():
            self.free.append(name)
        return Done(attempt.task, result, attempts=attempt.number, worker=name, node=node, lost=attempt.lost)

    def _settle_probe(self, ref: Any, work: _Round[Task]) -> None:
        name = self.probes.pop(ref)
        try:
            self.node_of[name] = ray.get(ref)
        except ActorUnavailableError:  # restarting or unreachable for now: ask again
            self._probe(name)
            return
        except ActorUnschedulableError:  # pinned to a node that is gone
            self.workers.pop(name, None)
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
        """Ask `name` which node it is on: its answer says it is up (again), and where."""
        self.probes[self.workers[name].__ray_call__.remote(_node_id)] = name

    def _start(self, **options: Any) -> None:
        """One more worker, numbered after every one started before (dead ones included)."""
        name = f"{self.factory.name_prefix}-{len(self.every_actor)}"
        self.workers[name] = self.remote.options(name=name, **options).remote(*self.factory.args)
        self.every_actor.append(self.workers[name])
        self._probe(name)

    def _room(self, resources: Mapping[str, float]) -> int:
        """How many workers fit a node of these total resources (the pool's size if a worker asks for none)."""
        needs = [(kind, need) for kind, need in (("CPU", self.factory.cpus), ("GPU", self.factory.gpus)) if need > 0]
        return min((int(resources.get(kind, 0.0) / need + 1e-9) for kind, need in needs), default=self.factory.count)

    def _look_at_nodes(self) -> list[dict[str, Any]]:
        nodes = ray.nodes()
        self.node_ips.update({node["NodeID"]: node["NodeManagerAddress"] for node in nodes})
        return nodes

    def _welcome_new_nodes(self, work: _Round[Task]) -> None:
        """Workers pinned to each node that joined since the last look (every NODE_LOOK_SECONDS), while tasks
        remain to hand out. Pinned: Ray's SPREAD would not move work there, and a pinned worker whose node is
        lost is not restarted elsewhere, where the pool already has its share."""
        if not work.remaining() or time.monotonic() < self.next_node_look:
            return
        self.next_node_look = time.monotonic() + NODE_LOOK_SECONDS
        for node in self._look_at_nodes():
            if node["Alive"] and node["NodeID"] not in self.seen_nodes:
                self.seen_nodes.add(node["NodeID"])
                count = min(self.per_node, self._room(node["Resources"]))
                for _ in range(count):
                    self._start(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
                log.info("%s: %s joined the cluster; %d worker(s) started there", self.factory.label,
                         self._label(node["NodeID"]), count)

    def _account(self, done: Done[Task], describe: Callable[[Task], str]) -> None:
        """Count where a task was done; say where one lost with its node or actor was redone."""
        if done.error is not None:
            return  # the caller reports a task out of attempts
        self.done_on[done.node] += 1
        if done.lost:
            self.redone += 1
            lost = "; ".join(f"lost with {self._label(attempt.node)} ({attempt.worker}: {attempt.error})"
                             for attempt in done.lost)
            log.warning("%s %s: %s; redone on %s by %s", self.factory.label, describe(done.task), lost,
                        self._label(done.node), done.worker)

    def _label(self, node: str) -> str:
        return f"node {node or '?'} ({self.node_ips.get(node, 'address unknown')})"
