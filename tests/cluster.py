"""A real multi-node Ray cluster and an S3 bucket on this machine, for the cluster tests.

`RayNodes` starts a head (`ray start --head`) and worker nodes (`ray start --address`), each its own raylet,
object store and temp folder, one CPU and a custom resource `node_<name>` so placement can be checked. Each
node runs in its own process session: killing that session with SIGKILL takes the node away the way a
reclaimed spot instance does, and teardown kills every session this harness started (never `ray stop`,
which would take other users' clusters on the machine with it). `MotoS3` runs moto's S3 server in its own
process; `S3_ENV` style variables hand its endpoint to every node, so actors read audio and write the store
through the same fsspec configuration as on a real cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
NODE_START_SECONDS = 120  # a loaded 2-core machine takes 20-40 s to bring up three nodes
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def session_of(pid: str) -> int:
    """The session id of process `pid` (/proc/PID/stat's sixth field; the name before it may hold spaces)."""
    return int((Path("/proc") / pid / "stat").read_text().rsplit(")", 1)[1].split()[3])


def kill_session(process: subprocess.Popen) -> None:
    """SIGKILL every process of the session `process` leads (it was started with start_new_session): its own
    process group and the groups Ray puts each worker in (an actor's process keeps the session, not the group)."""
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and session_of(entry.name) == process.pid:
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            continue
    process.wait(timeout=30)


def kill_processes_mentioning(marker: str) -> None:
    """The fallback: SIGKILL, by pid, any process whose command line names `marker` (a node's temp folder),
    in case one left its session."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue


@dataclass
class MotoS3:
    """moto's S3 server on 127.0.0.1 in its own process; `env` reaches it from any process, fsspec included."""

    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {**CREDENTIALS, "FSSPEC_S3": json.dumps({"client_kwargs": {"endpoint_url": self.endpoint}})}

    def start(self) -> MotoS3:
        self.process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                                         str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2).close()
                return self
            except OSError:
                if time.time() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"moto's S3 server did not start on {self.endpoint}") from None
                time.sleep(0.2)

    def use_here(self) -> None:
        """Point this process's fsspec at the server (fsspec read FSSPEC_S3 when it was imported)."""
        import fsspec
        import s3fs

        os.environ.update(self.env)
        fsspec.config.conf["s3"] = {"client_kwargs": {"endpoint_url": self.endpoint}}
        s3fs.S3FileSystem.clear_instance_cache()

    def stop(self) -> None:
        if self.process is not None:
            kill_session(self.process)
            self.process = None


@dataclass
class RayNodes:
    """A head and worker nodes, started with `ray start --block` in sessions of their own."""

    env: dict[str, str] = field(default_factory=dict)  # further variables for every node (the S3 endpoint)
    port: int = field(default_factory=free_port)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mlc", dir="/tmp")))
    nodes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def node_env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
                "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                # A node SIGKILLed is declared dead after ~3 missed 1 s health checks, not Ray's default 15 s.
                "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",
                **self.env}

    def start(self, name: str) -> None:
        """Start node `name` ("head" first); it counts once the cluster lists it alive."""
        temp = self.root / name
        command = [RAY, "start", "--block", "--num-cpus", "1", "--num-gpus", "0", "--disable-usage-stats",
                   "--resources", json.dumps({f"node_{name}": 1}), "--node-ip-address", "127.0.0.1",
                   "--temp-dir", str(temp), "--object-store-memory", str(100 * 1024 ** 2),
                   "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port",
                   str(free_port()), "--runtime-env-agent-port", str(free_port()),
                   "--metrics-export-port", str(free_port())]
        command += (["--head", "--port", str(self.port), "--include-dashboard", "false"] if name == "head"
                    else ["--address", self.address])
        log = open(self.root / f"{name}.log", "w")
        self.nodes[name] = subprocess.Popen(command, env=self.node_env(), stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        log.close()

    def wait_alive(self, names: list[str], timeout: float = NODE_START_SECONDS) -> None:
        """Block until every node of `names` is alive (this process must be connected: `connect`)."""
        import ray

        deadline = time.time() + timeout
        while set(names) - set(self.alive(ray.nodes())):
            if time.time() > deadline:
                raise RuntimeError(f"Ray nodes {names} did not all come up; logs in {self.root}")
            time.sleep(0.5)

    @staticmethod
    def alive(nodes: list[dict]) -> dict[str, str]:
        """node name -> Ray node id, for the live nodes this harness named."""
        named = {}
        for node in nodes:
            names = [key[5:] for key in node["Resources"] if key.startswith("node_")]
            if node["Alive"] and names:
                named[names[0]] = node["NodeID"]
        return named

    def ids(self) -> dict[str, str]:
        """node name -> Ray node id, for the live nodes (this process connected)."""
        import ray

        return self.alive(ray.nodes())

    def connect(self) -> None:
        """Join this process to the cluster as a driver (for ray.nodes(), ray.get_actor, in-process runs)."""
        import ray

        os.environ["RAY_AUTH_MODE"] = "disabled"
        deadline = time.time() + NODE_START_SECONDS
        while not ray.is_initialized():
            try:
                ray.init(address=self.address, log_to_driver=False, configure_logging=False)
            except (ConnectionError, RuntimeError):
                if time.time() > deadline:
                    raise
                time.sleep(1)

    def kill(self, name: str) -> None:
        """SIGKILL node `name` whole: its raylet, object store and every actor on it (their session)."""
        kill_session(self.nodes.pop(name))
        kill_processes_mentioning(str(self.root / name))

    def stop(self) -> None:
        """Every node this harness started, gone; safe to call twice and after a failed start."""
        import ray

        if ray.is_initialized():
            ray.shutdown()
        for name in [name for name in self.nodes if name != "head"] + ["head"]:
            if name in self.nodes:
                self.kill(name)
        kill_processes_mentioning(str(self.root))
        shutil.rmtree(self.root, ignore_errors=True)


def start_cluster(workers: list[str], env: dict[str, str]) -> RayNodes:
    """A head and `workers`, connected; torn down again if they fail to come up."""
    cluster = RayNodes(env=env)
    try:
        cluster.start("head")
        cluster.connect()
        for name in workers:
            cluster.start(name)
        cluster.wait_alive(["head", *workers])
    except BaseException:
        cluster.stop()
        raise
    return cluster


@dataclass(frozen=True)
class ActorPlace:
    """Where an actor runs (or last ran): its node's name, its process id, its state and restarts so far."""

    name: str
    node: str
    pid: int
    state: str
    restarts: int


def actor_places(prefix: str) -> list[ActorPlace]:
    """Every actor (alive or dead) whose name starts with `prefix`, read from the cluster's actor table (no
    dashboard needed); a restarted actor shows its latest node and process."""
    import ray
    from ray._private.state import actors

    by_id = {node["NodeID"]: key[5:] for node in ray.nodes() for key in node["Resources"] if key.startswith("node_")}
    return [ActorPlace(actor["Name"], by_id.get(actor["Address"]["NodeID"], "?"), actor["Pid"], actor["State"],
                       actor["NumRestarts"])
            for actor in actors().values() if (actor.get("Name") or "").startswith(prefix)]


@contextlib.contextmanager
def serving_s3(bucket: str) -> Iterator[MotoS3]:
    """moto's server with `bucket` made, this process's fsspec pointed at it, and both undone on exit (a
    module fixture's body)."""
    import fsspec

    server = MotoS3().start()
    previous = fsspec.config.conf.get("s3")
    saved = {name: os.environ.get(name) for name in server.env}
    try:
        server.use_here()
        fsspec.filesystem("s3").mkdir(bucket)
        yield server
    finally:
        server.stop()
        for name, value in saved.items():
            os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)
        fsspec.config.conf.pop("s3", None) if previous is None else fsspec.config.conf.__setitem__("s3", previous)


@contextlib.contextmanager
def running_cluster(workers: list[str], env: dict[str, str]) -> Iterator[RayNodes]:
    """`start_cluster`, stopped on exit whatever happened (a module fixture's body)."""
    nodes = start_cluster(workers, env)
    try:
        yield nodes
    finally:
        nodes.stop()


def driver_env(s3: MotoS3) -> dict[str, str]:
    """The environment of a `mullama` command run as a driver against the cluster and the bucket."""
    return {**os.environ, **s3.env, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"}


@dataclass
class PausedActors:
    """Actors of a run held still with SIGSTOP (their raylets keep answering, so Ray sees them alive, busy with
    whatever task they hold), so that a test knows which node alone made the progress it sees."""

    prefix: str
    pids: set[int] = field(default_factory=set)

    def catch_up(self, spare: str = "") -> None:
        """Pause every live actor of the run not on node `spare`, those that came up since the last call too."""
        for actor in actor_places(self.prefix):
            if actor.state == "ALIVE" and actor.node != spare and actor.pid not in self.pids:
                self.pause(actor.pid)

    def pause(self, pid: int) -> None:
        os.kill(pid, signal.SIGSTOP)
        self.pids.add(pid)

    def resume(self) -> None:
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self.pids.clear()


@dataclass(frozen=True)
class Redone:
    """One 'lost with node X ...; redone on node Y by W' line of the distributor (mullama/distribute.py)."""

    task: str
    lost_on: tuple[str, ...]  # Ray node ids the lost attempts ran on
    done_on: str


def redone_tasks(output: str) -> list[Redone]:
    pattern = re.compile(r"^\S+ (?P<task>.+?): (?P<lost>lost with node .+); redone on node (?P<node>\w+) ", re.M)
    return [Redone(match["task"], tuple(re.findall(r"lost with node (\w+) ", match["lost"])), match["node"])
            for match in pattern.finditer(output)]


def tasks_by_node(output: str) -> dict[str, int]:
    """Ray node id -> tasks completed there, from the distributor's last line of a run."""
    [spread] = re.findall(r"on Ray: \d+ tasks done on \d+ node\(s\) \((.*)\); \d+ redone", output)
    return {node: int(count) for node, count in re.findall(r"node (\w+) \([^)]*\): (\d+)", spread)}


def wait_until_dead(prefix: str, timeout: float = 120) -> None:
    """Block until every actor named `prefix`... is dead (Ray ends a killed driver's actors a little later)."""
    deadline = time.time() + timeout
    while any(actor.state != "DEAD" for actor in actor_places(prefix)):
        if time.time() > deadline:
            raise AssertionError(f"actors still alive {timeout} s after their driver died: {actor_places(prefix)}")
        time.sleep(0.5)
