"""Extraction on a real multi-node Ray cluster on this machine (tests/cluster.py's harness: `ray start` head and
workers, one CPU and its own raylet and object store each; moto's S3 server as the bucket), in one run:

  nodes     1, 2 and 3 nodes at work: one extraction actor of one CPU per node (the distributor spreads
            them), audio and store on local disk; clips/s and clips/s per node-core (this machine has 2
            cores, so 3 one-CPU nodes share 2 cores: the per-core rate is the figure that transfers)
  storage   3 nodes, audio and store on local disk, against the audio in the bucket (an s3:// manifest)
            with the store on disk, and against both in the bucket
  node loss 3 nodes and a spare, the same local run as the 3-node row, one worker node SIGKILLed just after
            the first commit: the extra wall seconds over the undisturbed run, and the clips redone (those
            of partitions committed under a retry id) times the measured seconds per clip per actor

Each row's actors are created and their models loaded inside the timed run, as a command would. The cluster
is started once for all rows (its start is timed apart).

    PYTHONPATH=. python benchmarks/cluster_scaling.py --clips 96 --size tiny
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import fsspec
import numpy as np
import soundfile as sf

from mullama.extract.config import ExtractConfig
from mullama.extract.ray_runner import run_ray
from mullama.fixtures.mert import write_random_mert
from mullama.store import FeatureStore
from tests.cluster import RayNodes, actor_places, running_cluster, serving_s3  # the harness the tests use

BUCKET = "s3://mullama-bench"
PARTITION = 8


def make_clips(folder: Path, count: int, rng: np.random.Generator) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for number in range(count):
        seconds = rng.choice([5.0, 10.0, 15.0])
        t = np.arange(int(seconds * 44100)) / 44100
        wave = np.sin(2 * np.pi * rng.uniform(100, 900) * t) * 0.3 + 0.01 * rng.standard_normal(t.shape)
        paths.append(folder / f"clip{number:04d}.flac")
        sf.write(str(paths[-1]), wave.astype(np.float32), 44100)
    return paths


def upload(paths: list[Path], root: Path) -> str:
    """The clips copied into the bucket, and an s3:// manifest naming them relative to itself."""
    s3 = fsspec.filesystem("s3")
    rows = []
    for path in paths:
        s3.put_file(str(path), f"{BUCKET}/audio/{path.name}")
        rows.append({"clip_id": path.stem, "path": f"audio/{path.name}"})
    with open(root / "s3.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["clip_id", "path"])
        writer.writeheader()
        writer.writerows(rows)
    s3.put_file(str(root / "s3.csv"), f"{BUCKET}/clips.csv")
    return f"{BUCKET}/clips.csv"


def extract(cluster: RayNodes, source: str, store: str, mert: Path, actors: int, clips: int) -> float:
    """Seconds of one `extract --ray` run (actors started inside it); every clip must land."""
    summary = run_ray(ExtractConfig(input=source, mert=str(mert), store=store, ray=cluster.address, actors=actors,
                                    actor_cpus=1.0, partition_size=PARTITION, batch_size=8, decode_threads=1,
                                    progress=False))
    assert summary.ok == clips, f"{summary.ok} of {clips} clips extracted"
    return summary.seconds


def kill_after_first_commit(cluster: RayNodes, store: Path, killed: list[str], stop: threading.Event) -> None:
    """Watch `store` for a data commit, then SIGKILL a worker node holding a live extraction actor."""
    while not stop.wait(0.2):
        commits = list((store / "commits").glob("*.json")) if (store / "commits").is_dir() else []
        hosts = sorted({a.node for a in actor_places("mullama-extract-") if a.state == "ALIVE"} - {"head", "?"})
        if any("special" not in c.name for c in commits) and hosts:
            cluster.kill(hosts[0])
            killed.append(hosts[0])
            return


def node_loss(cluster: RayNodes, source: str, root: Path, mert: Path, clips: int) -> dict[str, float]:
    cluster.start("spare")
    cluster.wait_alive(["spare"])
    store = root / "loss"
    killed: list[str] = []
    stop = threading.Event()
    watcher = threading.Thread(target=kill_after_first_commit, args=(cluster, store, killed, stop), daemon=True)
    watcher.start()
    try:
        seconds = extract(cluster, source, str(store), mert, 3, clips)
    finally:
        stop.set()
    redone = [c for c in FeatureStore.open(str(store)).commits() if not c.partition.endswith("-a0")]
    return {"seconds": seconds, "node_killed": killed[0] if killed else "none",
            "partitions_redone": len(redone), "clips_redone": sum(len(c.clips) for c in redone)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=96)
    parser.add_argument("--size", default="tiny")
    args = parser.parse_args()
    results: dict[str, object] = {"clips": args.clips, "partition_size": PARTITION, "machine_cores": os.cpu_count(),
                                  "load_average_at_start": os.getloadavg()}
    with tempfile.TemporaryDirectory() as scratch, serving_s3(BUCKET) as s3:
        root = Path(scratch)
        mert = write_random_mert(root / "mert", args.size)
        paths = make_clips(root / "clips", args.clips, np.random.default_rng(0))
        remote = upload(paths, root)
        started = time.perf_counter()
        with running_cluster(["w1", "w2"], s3.env) as cluster:
            results["cluster_start_seconds"] = time.perf_counter() - started
            for nodes in (1, 2, 3):
                seconds = extract(cluster, str(root / "clips"), str(root / f"nodes{nodes}"), mert, nodes, args.clips)
                results[f"nodes_{nodes}"] = {"seconds": seconds, "clips_per_s": args.clips / seconds,
                                             "clips_per_s_per_node_core": args.clips / seconds / min(nodes, 2)}
            results["s3_audio_local_store_seconds"] = extract(cluster, remote, str(root / "s3audio"), mert, 3,
                                                              args.clips)
            results["s3_audio_s3_store_seconds"] = extract(cluster, remote, f"{BUCKET}/store", mert, 3, args.clips)
            loss = node_loss(cluster, str(root / "clips"), root, mert, args.clips)
            per_clip = results["nodes_1"]["seconds"] / args.clips  # one actor's seconds per clip
            loss["extra_seconds_over_3_nodes"] = loss["seconds"] - results["nodes_3"]["seconds"]
            loss["work_redone_seconds"] = loss["clips_redone"] * per_clip
            results["node_loss"] = loss
    results["load_average_at_end"] = os.getloadavg()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
