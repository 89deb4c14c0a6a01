"""The Ray distributor on a local cluster (loopback, auth off): results as they come, lost actors' tasks
retried elsewhere (and said so, naming the nodes), a task that always kills its actor reported failed, start
failures as one error, and every actor gone at the end. A node joining is tests/test_cluster.py's (real
nodes)."""

import logging
import os
import sys
import time

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
ray = pytest.importorskip("ray")

from mullama.distribute import Lost, Retries, WorkerFactory, WorkerPool  # noqa: E402
from mullama.errors import MullamaError  # noqa: E402

pytestmark = pytest.mark.timeout(180)
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import a test module


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=4, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield
    ray.shutdown()


class Echo:
    """Answers a task with (task, its own actor name); 'die...' tasks end the actor's process."""

    def __init__(self, fail: bool = False):
        if fail:
            raise ValueError("no such checkpoint on this node")
        self.name = ray.get_runtime_context().get_actor_name()

    def run(self, task: str) -> tuple[str, str]:
        if task.startswith("die"):
            os._exit(1)
        time.sleep(1.0 if task == "slow" else 0.05)
        return task, self.name


def echo(actor, task):
    return actor.run.remote(task)


def factory(prefix: str, count: int = 2, **overrides) -> WorkerFactory:
    values = dict(count=count, cpus=0.5, name_prefix=f"test-{prefix}-{os.getpid()}", label="test", max_restarts=0)
    values.update(overrides)
    return WorkerFactory(Echo, **values)


def live_actors(prefix: str) -> list[str]:
    """Named actors of this prefix still alive, after giving Ray a moment to reap killed ones."""
    deadline = time.time() + 10
    while True:
        names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                 if a["name"].startswith(f"test-{prefix}-{os.getpid()}-")]
        if not names or time.time() > deadline:
            return names
        time.sleep(0.1)


def test_results_come_as_they_finish_spread_over_workers_and_every_actor_is_killed():
    drawn: list[str] = []

    def tasks():  # lazy: a task is drawn only when a worker is free for it
        for task in ["slow"] + [f"t{n}" for n in range(7)]:
            drawn.append(task)
            yield task

    with WorkerPool(factory("spread", tasks_in_flight=1)) as pool:
        results = []
        for done in pool.run(tasks(), echo):
            assert done.error is None and done.attempts == 1
            results.append(done.result)
            if len(results) == 1:
                assert len(drawn) <= 3  # two in flight and at most the next one
    assert results[-1][0] == "slow", "the slow task comes last, the others as they finish"
    assert sorted(task for task, _ in results) == sorted(["slow"] + [f"t{n}" for n in range(7)])
    assert len({worker for _, worker in results}) == 2
    assert live_actors("spread") == []


class Lines(logging.Handler):
    """The distributor's log lines, caught on its own logger (which mullama.raycluster may have set apart)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def ray_log():
    log, lines = logging.getLogger("mullama.ray"), Lines()
    level = log.level
    log.addHandler(lines)
    log.setLevel(logging.INFO)
    yield lines.lines
    log.removeHandler(lines)
    log.setLevel(level)


def test_a_lost_actors_task_is_renewed_and_retried_on_another_and_the_log_says_where(ray_log):
    polls = []
    with WorkerPool(factory("lost")) as pool:
        retries = Retries(3, renew=lambda task: f"retry-of-{task}")
        done = {d.task: d for d in pool.run(["die", "a", "b", "c"], echo, retries,
                                            on_poll=lambda workers: polls.append(len(workers)),
                                            describe=lambda task: f"job {task}")}
        assert len(pool.workers) == 1, "the dead actor was dropped (no restarts left)"
        assert done["retry-of-die"].worker in pool.workers, "retried on the other actor"
    assert set(done) == {"retry-of-die", "a", "b", "c"} and all(d.error is None for d in done.values())
    redone, node = done["retry-of-die"], ray.get_runtime_context().get_node_id()
    assert redone.attempts == 2 and redone.result[0] == "retry-of-die"
    assert [d.node for d in done.values()] == [node] * 4 and all(not d.lost for t, d in done.items() if t != redone.task)
    [lost] = redone.lost
    assert isinstance(lost, Lost) and (lost.node, lost.worker != redone.worker) == (node, True)
    where = f"node {node} ({ray.nodes()[0]['NodeManagerAddress']})"
    assert f"test job retry-of-die: lost with {where} ({lost.worker}: ActorDiedError); redone on {where} by " \
           f"{redone.worker}" in ray_log, ray_log
    assert ray_log[-1] == f"test on Ray: 4 tasks done on 1 node(s) ({where}: 4); 1 redone after a lost node or actor"
    assert polls and live_actors("lost") == []


def test_a_task_that_always_kills_its_actor_fails_after_the_limit_and_ray_restarts_the_actors():
    with WorkerPool(factory("poison", max_restarts=2)) as pool:
        done = {d.task: d for d in pool.run(["die", "a", "b", "c", "d"], echo, Retries(2))}
    assert done["die"].attempts == 2 and isinstance(done["die"].error, ray.exceptions.RayActorError)
    assert all(done[task].error is None for task in "abcd")
    assert live_actors("poison") == []


def test_recover_says_a_lost_attempt_landed_anyway():
    with WorkerPool(factory("recover")) as pool:
        done = list(pool.run(["die"], echo, Retries(3, recover=lambda task: ("landed", task))))
    assert [(d.task, d.result, d.attempts) for d in done] == [("die", ("landed", "die"), 1)]


def test_every_actor_dead_and_an_actor_failing_to_start_are_one_clear_error():
    with pytest.raises(MullamaError, match="^every Ray test actor died; see the Ray logs for why$"):
        with WorkerPool(factory("alldead", count=1)) as pool:
            list(pool.run(["die", "a"], echo, Retries(3)))
    with pytest.raises(MullamaError, match="^a Ray test actor failed to start: .*no such checkpoint on this node"):
        with WorkerPool(factory("nostart", args=(True,))) as pool:
            list(pool.run(["a"], echo))
    assert live_actors("alldead") == [] and live_actors("nostart") == []


def test_leaving_the_loop_early_kills_every_actor():
    with pytest.raises(KeyboardInterrupt):
        with WorkerPool(factory("interrupted")) as pool:
            for _ in pool.run(["a", "b", "c"], echo):
                raise KeyboardInterrupt
    assert live_actors("interrupted") == []
