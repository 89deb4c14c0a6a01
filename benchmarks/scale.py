"""The store, its catalog commands and the server at 10^4, 10^5 and 10^6 clips, against the scale targets.

Synthetic stores are written through `FeatureStore.write_partition` with the demo encoder's identity (a
random-weight MERT-tiny: 4 x 64 float16 stacks, one 30 s window per clip) in partitions of 256 clips, in two
layouts: dense (64 tight groups of near-alike clips, as real collections have many near-alike tracks) and
spread (independent random vectors). Per size, every command runs in a fresh process (nice 10):

  store open      FeatureStore.open: seconds and the catalog's resident memory (RSS after - RSS before)
  store info / verify / gc, export-shards (three QA pairs per clip), index build (defaults: --target-recall
                  0.99; both layouts): wall seconds, peak RSS, and the most times any commit record was read
                  (the process's store reads are counted by wrapping Location.read_bytes / read_many)
  caption, eval generate   random-weight tiny LLaMA + untrained adapter: seconds until the first batch is done
                  (read from the progress bar), then stopped
  serve           seconds to a healthy /health, resident memory, /v1/clips?query= latency p50 / p99 for a
                  query matching many clips, one matching one clip and one matching none

Targets (PASS / FAIL): catalog operations (open, info, verify, gc) at most 20 us per clip; serve memory growth
at most 2 KB per clip; no command reads a commit record twice; /v1/clips answers in <= 100 ms (p99) at 1M.

    python benchmarks/scale.py --work /work/scale-bench [--sizes 10000,100000,1000000] [--reuse]
                               [--layouts dense,spread] [--json results.json]

--reuse keeps stores (and models) already complete in --work; without it they are written from scratch.
"""

from __future__ import annotations

import argparse
import atexit
import collections
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from mullama.cli import main as mullama_main
from mullama.store import SILENCE_CLIP, ClipResult, FeatureStore, StoreSettings
from mullama.store.location import Location

CLIPS_PER_PARTITION = 256
GROUPS = 64
QA_PER_CLIP = 3
EVAL_CLIPS = 1000
QUESTIONS = ["What instrument is playing?", "What is the tempo of the music?", "What mood does this piece convey?"]
US_PER_CLIP = 20.0
SERVE_BYTES_PER_CLIP = 2048
SEARCH_MS = 100.0
COUNTS_ENV = "MULLAMA_SCALE_COUNTS"
BEFORE_EXPORT_CLIPS = 10_000
BEFORE_SEARCHES = 5  # the code before the fixes scans a million ids per search: a few searches show it


# ----------------------------------------------------------------- counting commit-record reads
def install_read_counter(path: str) -> None:
    """Count, in this process, every read of a commit record; written to `path` as JSON at exit."""
    counts: collections.Counter[str] = collections.Counter()
    read_bytes, read_many = Location.read_bytes, Location.read_many

    def counted_bytes(self, key):
        if key.startswith("commits/"):
            counts[key] += 1
        return read_bytes(self, key)

    def counted_many(self, keys):
        counts.update(key for key in keys if key.startswith("commits/"))
        return read_many(self, keys)

    Location.read_bytes, Location.read_many = counted_bytes, counted_many

    def dump(*_):
        usage = resource.getrusage(resource.RUSAGE_SELF)
        Path(path).write_text(json.dumps({"records": len(counts), "reads": sum(counts.values()),
                                          "max_per_record": max(counts.values(), default=0),
                                          "peak_mb": round(usage.ru_maxrss / 1024, 1),
                                          "cpu_s": round(usage.ru_utime + usage.ru_stime, 2)}))

    atexit.register(dump)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # atexit runs on a polite stop too


def counted_cli(args: list[str]) -> None:
    """`mullama ARGS` with commit-record reads counted (the benchmark runs every command this way)."""
    install_read_counter(os.environ[COUNTS_ENV])
    sys.argv = ["mullama", *args]
    mullama_main()


# ----------------------------------------------------------------- building the inputs
def demo_models(work: Path) -> tuple[Path, Path, Path]:
    """The demo's random MERT-tiny (its identity is the store's), a random tiny LLaMA and an untrained adapter."""
    # Imported here, not at the top: this file also runs inside every measured command (--counted-cli), whose
    # memory and CPU must not include torch and transformers unless the command itself loads them.
    from mullama.extract.mert import MertSpec
    from mullama.fixtures.llama import write_random_llama
    from mullama.fixtures.mert import write_random_mert
    from mullama.model.music_llama import MusicLlama

    mert, llama, adapter = work / "mert-tiny", work / "llama-tiny", work / "adapter"
    if not (mert / "config.json").is_file():
        write_random_mert(mert, "tiny", 0)
    if not (llama / "config.json").is_file():
        write_random_llama(llama, "tiny", seed=0)
    if not (adapter / "adapter.json").is_file():
        MusicLlama.create(llama, MertSpec.read(mert).identity, device="cpu").save(adapter)
    return mert, llama, adapter


def clip_id(number: int) -> str:
    return f"artist{number % 997:03d}_track-{number:07d}"


def stacks_of(layout: str, numbers: np.ndarray, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    """(n, 1, 4, 64) window stacks: dense clips sit within 2% of one of GROUPS centres; spread ones anywhere."""
    noise = rng.normal(size=(len(numbers), 1) + centres.shape[1:]).astype(np.float32)
    if layout == "spread":
        return noise
    return centres[numbers % GROUPS][:, None] + 0.02 * noise


def write_store(root: Path, mert: Path, clips: int, layout: str) -> float:
    """Write the synthetic store; seconds taken. A `.complete` marker lets --reuse trust it."""
    from mullama.extract.mert import MertSpec  # not at the top: torch (see demo_models)

    spec = MertSpec.read(mert)
    if root.exists():
        shutil.rmtree(root)
    store = FeatureStore.create(str(root), spec.identity, spec.store_settings(StoreSettings(precision="fp32")))
    rng = np.random.default_rng({"dense": 1, "spread": 2}[layout])
    centres = np.random.default_rng(0).normal(size=(GROUPS,) + spec.identity.stack_shape).astype(np.float32)
    started = time.perf_counter()
    for low in range(0, clips, CLIPS_PER_PARTITION):
        numbers = np.arange(low, min(clips, low + CLIPS_PER_PARTITION))
        stacks = stacks_of(layout, numbers, rng, centres)
        results = [ClipResult(clip_id(n), f"audio/{clip_id(n)}.wav", f"{n:064x}", 30.0, stack, size=480000,
                              mtime_ns=n) for n, stack in zip(numbers.tolist(), stacks)]
        if low == 0:  # as extraction does: the stack of 1 s of silence, for eval's silence control
            results.append(ClipResult(SILENCE_CLIP, "(1 s of digital silence)", duration=1.0,
                                      window_stacks=np.zeros((1,) + spec.identity.stack_shape, np.float32)))
        store.write_partition(results, partition_id=f"p-{low // CLIPS_PER_PARTITION:06d}", precision="fp32")
    seconds = time.perf_counter() - started
    (root / ".complete").write_text(json.dumps({"clips": clips, "layout": layout, "seconds": seconds}))
    return seconds


def write_qa(path: Path, numbers: range) -> None:
    """MusicQA: one item per clip carrying QA_PER_CLIP question-answer turns."""
    with open(path, "w") as handle:
        handle.write("[")
        for position, number in enumerate(numbers):
            turns = []
            for question in QUESTIONS[:QA_PER_CLIP]:
                turns += [{"from": "human", "value": question},
                          {"from": "gpt", "value": f"Group {number % GROUPS}, take {number % 7}."}]
            handle.write(("," if position else "") + json.dumps({"audio_name": clip_id(number), "conversation": turns}))
        handle.write("]")


# ----------------------------------------------------------------- measuring one process
CODE = {"path": ""}  # --before-code: the mullama checkout the "before" column runs (PYTHONPATH)


def base_env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "MULLAMA_API_KEY": "", "PYTHONUNBUFFERED": "1"}
    if CODE["path"]:
        env["PYTHONPATH"] = CODE["path"]
    return env


def spawn(args: list[str], counts: Path) -> subprocess.Popen:
    """`mullama ARGS` in a fresh process, its commit-record reads and peak RSS written to `counts` at exit."""
    counts.unlink(missing_ok=True)
    return subprocess.Popen([sys.executable, __file__, "--counted-cli", *args],
                            env={**base_env(), COUNTS_ENV: str(counts)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finished(process: subprocess.Popen, counts: Path, seconds: float, output: str) -> dict:
    stats = json.loads(counts.read_text()) if counts.is_file() else {}
    return {"seconds": round(seconds, 3), "peak_mb": stats.pop("peak_mb", None), "cpu_s": stats.pop("cpu_s", None),
            "exit": process.returncode,
            "reads": stats, "output": [line for line in output.strip().splitlines() if line.strip()][-3:]}


def run_to_end(args: list[str], counts: Path) -> dict:
    """Wall seconds, peak RSS (MB), exit code and commit-record reads of one whole command."""
    started = time.perf_counter()
    process = spawn(args, counts)
    output = process.communicate()[0].decode(errors="replace")
    return finished(process, counts, time.perf_counter() - started, output)


def memory_mb(pid: int, field: str) -> float:
    """VmRSS (resident now) or VmHWM (peak) of a live process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process so far (on a shared machine, wall time mostly measures load)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)


def run_to_first_batch(args: list[str], counts: Path) -> dict:
    """Seconds until the progress bar first counts done items (the first batch), then the command is stopped."""
    started = time.perf_counter()
    process = spawn([*args, "--progress"], counts)
    seen, first, peak, first_cpu = b"", None, None, None
    while first is None:
        chunk = os.read(process.stdout.fileno(), 4096)
        if not chunk:
            break
        seen += chunk
        if any(int(done) > 0 for done in re.findall(rb"\b(\d+)/\d+ \[", seen)):
            first = time.perf_counter() - started
            peak, first_cpu = memory_mb(process.pid, "VmHWM"), cpu_seconds(process.pid)
            process.send_signal(signal.SIGTERM)
    rest = process.communicate()[0]
    report = finished(process, counts, time.perf_counter() - started, (seen + rest).decode(errors="replace"))
    report.update(first_batch_s=None if first is None else round(first, 2), first_batch_cpu_s=first_cpu, peak_mb=peak)
    return report


OPEN_SNIPPET = """
import json, sys, time
from pathlib import Path
def rss():
    return int(next(l for l in Path('/proc/self/status').read_text().splitlines() if l.startswith('VmRSS:')).split()[1])
from mullama.store import FeatureStore
before = rss(); started = time.perf_counter(); cpu = time.process_time()
store = FeatureStore.open(sys.argv[1])
seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
print(json.dumps({"seconds": round(seconds, 3), "cpu_s": round(cpu, 3), "catalog_mb": round((rss() - before) / 1024, 1),
                  "clips": len(store)}))
"""


def measure_open(store: Path) -> dict:
    """FeatureStore.open in a fresh process: seconds, and the resident memory the catalog added."""
    out = subprocess.run([sys.executable, "-c", OPEN_SNIPPET, str(store)], env=base_env(), capture_output=True,
                         text=True, check=True, cwd=store.parent)  # -c puts the working folder first on sys.path
    return json.loads(out.stdout)


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read())


def latencies_ms(url: str, repeats: int) -> dict:
    get_json(url)  # warm
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        found = get_json(url)
        times.append((time.perf_counter() - started) * 1000)
    return {"p50_ms": round(float(np.percentile(times, 50)), 2), "p99_ms": round(float(np.percentile(times, 99)), 2),
            "found": len(found["data"])}


def measure_serve(store: Path, adapter: Path, llama: Path, clips: int, counts: Path, repeats: int = 50) -> dict:
    """Seconds to a healthy /health, resident memory, and /v1/clips?query= latency; then a polite stop."""
    started = time.perf_counter()
    process = spawn(["serve", "--adapter", str(adapter), "--llama", str(llama), "--store", str(store), "--port", "0",
                     "--device", "cpu", "--threads", "1"], counts)
    seen = b""
    while not (match := re.search(rb"at http://127\.0\.0\.1:(\d+)/", seen)):
        chunk = os.read(process.stdout.fileno(), 4096)
        if not chunk:
            raise RuntimeError(f"the server did not start: {seen.decode(errors='replace')[-2000:]}")
        seen += chunk
    base = f"http://127.0.0.1:{int(match.group(1))}"
    while True:
        try:
            if get_json(f"{base}/health").get("status") in ("ok", "healthy"):
                break
        except OSError:
            pass
        time.sleep(0.05)
    healthy, healthy_cpu = time.perf_counter() - started, cpu_seconds(process.pid)
    resident = memory_mb(process.pid, "VmRSS")
    queries = {"many": "track-00001", "one": clip_id(clips // 2), "none": "no-such-clip"}
    search = {name: latencies_ms(f"{base}/v1/clips?query={query}", repeats) for name, query in queries.items()}
    resident_after = memory_mb(process.pid, "VmRSS")
    process.send_signal(signal.SIGINT)
    output = process.communicate()[0].decode(errors="replace")
    report = finished(process, counts, time.perf_counter() - started, output)
    report.update(healthy_s=round(healthy, 2), healthy_cpu_s=healthy_cpu, rss_mb=resident, rss_after_search_mb=resident_after, search=search)
    return report


# ----------------------------------------------------------------- one size
def prepare(work: Path, mert: Path, clips: int, layouts: list[str], reuse: bool) -> dict[str, Path]:
    stores = {}
    for layout in layouts:
        root = work / f"store-{clips}-{layout}"
        if not (reuse and (root / ".complete").is_file()):
            seconds = write_store(root, mert, clips, layout)
            print(f"  wrote {root} in {seconds:.0f} s", flush=True)
        stores[layout] = root
    for name, numbers in ((f"qa-{clips}.json", range(clips)),
                          (f"eval-{clips}.json", range(0, clips, max(1, clips // EVAL_CLIPS)))):
        if not (reuse and (work / name).is_file()):
            write_qa(work / name, numbers)
    return stores


def measure_size(work: Path, models: tuple[Path, Path, Path], clips: int, layouts: list[str], reuse: bool,
                 before: str = "", only: set[str] | None = None) -> dict:
    """Every measurement at one size; the catalog and serving ones on the first layout's store (the catalog never
    looks at the vectors), index build on each layout."""
    _, llama, adapter = models
    stores = prepare(work, models[0], clips, layouts, reuse)
    store = stores[layouts[0]]
    scratch = work / f"scratch-{clips}-{os.getpid()}"  # runs of other steps may share --work
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    counts = scratch / "counts.json"
    steps = {
        "open": lambda: measure_open(store),
        "info": lambda: run_to_end(["store", "info", str(store)], counts),
        "verify": lambda: run_to_end(["store", "verify", str(store)], counts),
        "gc": lambda: run_to_end(["store", "gc", str(store)], counts),
        "export_shards": lambda: run_to_end(["store", "export-shards", str(store), "--out", str(scratch / "shards"),
                                             "--qa", str(work / f"qa-{clips}.json"), "--no-progress",
                                             "--overwrite"], counts),
        "caption": lambda: run_to_first_batch(["caption", "--store", str(store), "--adapter", str(adapter), "--llama",
                                               str(llama), "--out", str(scratch / "captions.jsonl"), "--batch-size",
                                               "16", "--max-new-tokens", "8", "--device", "cpu"], counts),
        "eval_generate": lambda: run_to_first_batch(
            ["eval", "generate", "--store", str(store), "--adapter", str(adapter), "--llama", str(llama), "--qa",
             str(work / f"eval-{clips}.json"), "--out", str(scratch / "answers.jsonl"), "--controls",
             "shuffled,silence", "--batch-size", "8", "--max-new-tokens", "8", "--device", "cpu"], counts),
        "serve": lambda: measure_serve(store, adapter, llama, clips, counts,
                                       repeats=BEFORE_SEARCHES if CODE["path"] and clips > 100_000 else 50),
    }
    results: dict = {"clips": clips, "partitions": -(-clips // CLIPS_PER_PARTITION)}
    for name, step in steps.items():
        if only and name not in only:
            continue
        results[name] = step()
        print(f"  {clips} {name}: {json.dumps(results[name])}", flush=True)
    results["index_build"] = {}
    for layout, root in stores.items():
        if only and "index_build" not in only:
            break
        shutil.rmtree(root / "indexes", ignore_errors=True)
        report = run_to_end(["index", "build", str(root), "--no-progress"], counts)
        text = " ".join(report["output"])
        recall = re.search(r"recall@10 ([0-9.]+)", text)
        kind = re.search(r"index (\S+) \(", text)
        exact = kind is not None and kind.group(1) == "Flat"  # exact search: recall 1 by construction
        report.update(recall=float(recall.group(1)) if recall else 1.0 if exact else None,
                      type=kind.group(1) if kind else None)
        results["index_build"][layout] = report
        print(f"  {clips} index build {layout}: {json.dumps(report)}", flush=True)
    if before:
        results["before"] = measure_before(before, steps, clips, only)
    shutil.rmtree(scratch, ignore_errors=True)
    return results


def measure_before(code: str, steps: dict, clips: int, only: set[str] | None) -> dict:
    """The steps the fixes changed, run by another checkout (the code before them); export-shards only where
    the old per-row reads finish in minutes."""
    CODE["path"] = code
    try:
        names = ["open", "serve"] + (["export_shards"] if clips <= BEFORE_EXPORT_CLIPS else [])
        names = [name for name in names if not only or name in only]
        before = {}
        for name in names:
            before[name] = steps[name]()
            print(f"  {clips} before {name}: {json.dumps(before[name])}", flush=True)
        return before
    finally:
        CODE["path"] = ""


# ----------------------------------------------------------------- the report
def us_per_clip(seconds: float, clips: int) -> float:
    return seconds * 1e6 / clips


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def catalog_rows(results: list[dict]) -> list[str]:
    """One row per catalog operation: wall and CPU seconds at each size, the CPU cost of each added clip, and the
    20 us target judged on CPU time (on a shared machine wall time mostly measures the other processes' load)."""
    rows = []
    for name, label in (("open", "store open"), ("info", "store info"), ("verify", "store verify"),
                        ("gc", "store gc"), ("export_shards", "export-shards (3 QA / clip)")):
        measured = [r for r in results if name in r]
        if not measured:
            continue
        cells = [f"{r[name]['seconds']:.2f} s wall, {r[name]['cpu_s']:.2f} s CPU "
                 f"({us_per_clip(r[name]['cpu_s'], r['clips']):.1f} us/clip)" if name in r else "not run"
                 for r in results]
        first, last = measured[0], measured[-1]
        added = last["clips"] - first["clips"]
        marginal = us_per_clip(last[name]["cpu_s"] - first[name]["cpu_s"], added) if added else float("nan")
        at_largest = us_per_clip(last[name]["cpu_s"], last["clips"])
        target = (verdict(at_largest <= US_PER_CLIP and marginal <= US_PER_CLIP) + " (<= 20 us CPU per clip)"
                  if name != "export_shards" else "(writes shards: not a catalog op)")
        rows.append(f"| {label} | " + " | ".join(cells) + f" | x{last[name]['cpu_s'] / first[name]['cpu_s']:.1f} "
                    f"CPU, {marginal:.1f} us per added clip | {target} |")
    return rows


def report_lines(results: list[dict]) -> list[str]:
    sizes = [f"{r['clips']:,}" for r in results]
    factor = results[-1]["clips"] / results[0]["clips"]
    head = "| | " + " | ".join(sizes) + f" | growth (clips x{factor:.0f}) | target |"
    lines = [head, "|" + "---|" * (len(results) + 3)]
    lines += catalog_rows(results)
    lines.append("| catalog memory (open) | " + " | ".join(
        f"{r['open']['catalog_mb']:.0f} MB ({r['open']['catalog_mb'] * 1024 * 1024 / r['clips']:.0f} B/clip)"
        for r in results) + " | | |")
    for name in ("info", "verify", "gc", "export_shards"):
        lines.append(f"| peak RSS {name.replace('_', '-')} | " + " | ".join(
            f"{r[name]['peak_mb']:.0f} MB" if name in r else "not run" for r in results) + " | | |")
    for name in ("caption", "eval_generate"):
        lines.append(f"| {name.replace('_', ' ')}: first batch | " + " | ".join(
            f"{r[name]['first_batch_s']} s (CPU {r[name]['first_batch_cpu_s']} s), {r[name]['peak_mb']} MB"
            for r in results) + " | | |")
    layouts = list(results[0]["index_build"])
    for layout in layouts:
        lines.append(f"| index build {layout} | " + " | ".join(
            f"{b['seconds']:.0f} s (CPU {b['cpu_s']} s), {b['peak_mb']} MB, {b['type']}, recall {b['recall']}, "
            f"exit {b['exit']}"
            for b in (r["index_build"][layout] for r in results)) + " | | recall >= 0.99 or exit 1 |")
    lines.append("| serve: healthy | " + " | ".join(f"{r['serve']['healthy_s']} s (CPU {r['serve']['healthy_cpu_s']} s)"
                                                    for r in results) + " | | |")
    lines.append("| serve: resident | " + " | ".join(f"{r['serve']['rss_mb']:.0f} MB" for r in results) + " | | |")
    growth = ((results[-1]["serve"]["rss_mb"] - results[0]["serve"]["rss_mb"]) * 1024 * 1024
              / (results[-1]["clips"] - results[0]["clips"])) if len(results) > 1 else float("nan")
    lines.append(f"| serve: memory growth | {growth:.0f} B/clip from {sizes[0]} to {sizes[-1]} | " + " | " * (len(results) - 1)
                 + f" | {verdict(growth <= SERVE_BYTES_PER_CLIP)} (<= 2 KB/clip) |")
    for query in ("many", "one", "none"):
        cells = [f"{r['serve']['search'][query]['p50_ms']} / {r['serve']['search'][query]['p99_ms']} ms"
                 for r in results]
        worst = results[-1]["serve"]["search"][query]["p99_ms"]
        lines.append(f"| /v1/clips?query= ({query}) p50 / p99 | " + " | ".join(cells)
                     + f" | | {verdict(worst <= SEARCH_MS)} (<= 100 ms at the largest) |")
    reads = max([r[name]["reads"].get("max_per_record", 0) for r in results
                 for name in ("info", "verify", "gc", "export_shards", "caption", "eval_generate", "serve") if name in r]
                + [b["reads"].get("max_per_record", 0) for r in results for b in r.get("index_build", {}).values()])
    lines.append(f"| most reads of one commit record by one command | {reads} | " + " | " * (len(results) - 1)
                 + f" | {verdict(reads <= 1)} (<= 1) |")
    return lines


def before_after_lines(results: list[dict]) -> list[str]:
    """Before / after the fixes, at each size measured with --before-code (the serving rows' wall times are
    taken minutes apart on a shared machine; CPU seconds compare the work)."""
    lines = ["| clips | measure | before | after |", "|---|---|---|---|"]
    for r in (r for r in results if "before" in r):
        old, clips = r["before"], f"{r['clips']:,}"
        if "open" in old:
            lines.append(f"| {clips} | store open | {old['open']['cpu_s']} s CPU, {old['open']['catalog_mb']} MB | "
                         f"{r['open']['cpu_s']} s CPU, {r['open']['catalog_mb']} MB |")
        lines.append(f"| {clips} | serve: healthy, resident | {old['serve']['healthy_cpu_s']} s CPU, "
                     f"{old['serve']['rss_mb']:.0f} MB | {r['serve']['healthy_cpu_s']} s CPU, "
                     f"{r['serve']['rss_mb']:.0f} MB |")
        for query in ("many", "one", "none"):
            was, now = old["serve"]["search"][query], r["serve"]["search"][query]
            lines.append(f"| {clips} | /v1/clips ({query}) p50 / p99 | {was['p50_ms']} / {was['p99_ms']} ms | "
                         f"{now['p50_ms']} / {now['p99_ms']} ms |")
        if old.get("export_shards", {}).get("exit") == 0:
            lines.append(f"| {clips} | export-shards | {old['export_shards']['cpu_s']:.1f} s CPU | "
                         f"{r['export_shards']['cpu_s']:.1f} s CPU |")
    return lines if len(lines) > 2 else []


def merged(runs: list[list[dict]]) -> list[dict]:
    """One result per size from several runs' --json lists (index builds and before-rows merged by key)."""
    sizes: dict[int, dict] = {}
    for run in runs:
        for result in run:
            into = sizes.setdefault(result["clips"], {})
            for key, value in result.items():
                if key in ("index_build", "before"):
                    into.setdefault(key, {}).update(value)
                else:
                    into[key] = value
    return [sizes[clips] for clips in sorted(sizes)]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--counted-cli":
        counted_cli(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="/work/scale-bench", help="Folder for the stores, models and scratch")
    parser.add_argument("--sizes", default="10000,100000,1000000", help="Comma-separated clip counts")
    parser.add_argument("--layouts", default="dense,spread", help="dense and/or spread (index build runs on each)")
    parser.add_argument("--reuse", action="store_true", help="Keep stores already complete in --work")
    parser.add_argument("--before-code", default="", help="A mullama checkout without the fixes: open, serve and "
                        "export-shards run again with it (PYTHONPATH) for a before / after comparison")
    parser.add_argument("--steps", default="", help="Only these steps (comma-separated: open, info, verify, gc, "
                        "export_shards, caption, eval_generate, serve, index_build); default: all")
    parser.add_argument("--json", default="", help="Also write every measurement to this JSON file")
    parser.add_argument("--table-from", nargs="+", default=[], help="Print the table of earlier --json files (runs "
                        "of parts of the steps or sizes are merged) and stop")
    args = parser.parse_args()
    if args.table_from:
        earlier = merged([json.loads(Path(path).read_text()) for path in args.table_from])
        print("\n".join(report_lines(earlier) + [""] + before_after_lines(earlier)))
        return
    os.nice(10)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    models = demo_models(work)
    results = []
    for clips in (int(size) for size in args.sizes.split(",")):
        print(f"{clips} clips (load average {os.getloadavg()[0]:.1f})", flush=True)
        results.append(measure_size(work, models, clips, args.layouts.split(","), args.reuse,
                                    args.before_code, set(filter(None, args.steps.split(",")))))
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    if args.steps:  # a part of the measurements: merge the --json files of the parts, then --table-from
        return
    print("\n".join(report_lines(results) + [""] + before_after_lines(results)))


if __name__ == "__main__":
    main()
