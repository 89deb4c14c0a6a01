"""`mullama serve` under load: dynamic batching against one request at a time, measured side by side.

Two real server processes on 127.0.0.1 serve the demo's trained adapter and mini LLaMA (run `mullama demo
--out DEMO` first): one with --max-batch-size 1 (one request at a time), one with dynamic batching
(--max-batch-size 8). The same workload runs against each: CLIENTS concurrent clients, each asking
REQUESTS questions back to back about stored clips at the published sampling settings, streamed over plain
HTTP with usage (the `openai` client itself is exercised by the tests; here its CPU time would be taken from
the server on a small machine). Reported per server: requests/s, new tokens/s, mean batch size, latency
p50/p99 and time to first streamed token p50/p99; the throughput ratio per round; one client alone against
the batching server; and the ceiling: one generate() of CLIENTS rows against as many alone, without HTTP.

    python benchmarks/serve_throughput.py --demo demo-run [--clients 8] [--requests 10] [--max-tokens 40]
                                          [--threads N] [--batch-wait-ms MS] [--repeats 3]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from mullama.model.music_llama import MusicLlama
from mullama.store import FeatureStore

QUESTIONS = ["Describe the audio in detail", "What instrument is playing?", "What is the tempo of the music?",
             "What mood does this piece convey?"]


def start_server(demo: Path, batch: int, threads: int, extra: list[str]) -> tuple[subprocess.Popen, int]:
    adapter = demo / "train" / "stage2" / "adapter"
    adapter = adapter if adapter.exists() else demo / "train" / "stage1" / "adapter"
    command = [str(Path(sys.executable).parent / "mullama"), "serve", "--adapter", str(adapter), "--llama",
               str(demo / "llama-mini-text"), "--store", str(demo / "store"), "--port", "0", "--device", "cpu",
               "--max-batch-size", str(batch), "--model-name", "demo", "--threads", str(threads), *extra]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "HF_HUB_OFFLINE": "1", "MULLAMA_API_KEY": ""})
    for line in process.stdout:
        match = re.search(r"at http://127\.0\.0\.1:(\d+)/", line)
        if match:
            threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()
            return process, int(match.group(1))
    raise RuntimeError("the server did not start")


def one_request(port: int, clip: str, question: str, max_tokens: int) -> dict:
    """One streamed request over plain HTTP (a light client: on a 2-core machine the clients' own CPU time
    would otherwise be taken from the server being measured)."""
    started = time.perf_counter()
    first = None
    tokens = 0
    body = {"model": "demo", "messages": [{"role": "user", "content": question}], "temperature": 0.6, "top_p": 0.8,
            "max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True}, "clip_id": clip}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    connection.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200, response.read()
    for line in response:
        if not line.startswith(b"data: {"):
            continue
        chunk = json.loads(line[6:])
        if chunk["choices"] and chunk["choices"][0]["delta"].get("content") and first is None:
            first = time.perf_counter() - started
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
    connection.close()
    return {"latency": time.perf_counter() - started, "first_token": first, "tokens": tokens}


def batch_totals(port: int) -> tuple[float, float]:
    """(rows generated, generate() calls) so far, from the server's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as response:
        metrics = response.read().decode()
    return tuple(float(re.search(rf"^mullama_batch_size_{part} (\S+)$", metrics, re.M).group(1))
                 for part in ("sum", "count"))


def load(port: int, clips: list[str], clients: int, requests: int, max_tokens: int) -> dict:
    one_request(port, clips[0], QUESTIONS[0], 4)  # warm-up
    batches_before = batch_totals(port)

    def client(number: int) -> list[dict]:
        return [one_request(port, clips[(number * requests + i) % len(clips)], QUESTIONS[i % len(QUESTIONS)],
                            max_tokens) for i in range(requests)]

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [r for batch in pool.map(client, range(clients)) for r in batch]
    seconds = time.perf_counter() - started
    latency = np.array([r["latency"] for r in results])
    first = np.array([r["first_token"] for r in results if r["first_token"] is not None])
    tokens = sum(r["tokens"] for r in results)
    batch_sum, batch_count = (after - before for after, before in zip(batch_totals(port), batches_before))
    return {"mean_batch_size": round(batch_sum / batch_count, 2),"requests": len(results), "seconds": round(seconds, 1),
            "requests_per_s": round(len(results) / seconds, 2), "tokens_per_s": round(tokens / seconds, 1),
            "mean_tokens": round(tokens / len(results), 1),
            "latency_p50_s": round(float(np.percentile(latency, 50)), 2),
            "latency_p99_s": round(float(np.percentile(latency, 99)), 2),
            "first_token_p50_s": round(float(np.percentile(first, 50)), 3),
            "first_token_p99_s": round(float(np.percentile(first, 99)), 3)}


def generate_ceiling(demo: Path, store, batch: int, max_tokens: int) -> dict:
    """What batching can give at most here: `batch` answers one at a time against one generate() call of
    `batch` rows, in this process, with the server's default thread count and no HTTP at all."""
    torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))
    adapter = demo / "train" / "stage2" / "adapter"
    adapter = adapter if adapter.exists() else demo / "train" / "stage1" / "adapter"
    model = MusicLlama.load(adapter, demo / "llama-mini-text", device="cpu")
    stacks = store.get(store.clip_ids()[:batch]).astype(np.float32)
    settings = {"temperature": 0.6, "top_p": 0.8, "max_new_tokens": max_tokens, "seed": 0}
    model.answer(stacks[0], QUESTIONS[0], **settings)  # warm-up
    started = time.perf_counter()
    for stack in stacks:
        model.answer(stack, QUESTIONS[0], **settings)
    alone = time.perf_counter() - started
    started = time.perf_counter()
    model.answer_batch(stacks, [QUESTIONS[0]] * batch, **settings)
    together = time.perf_counter() - started
    torch.set_num_threads(os.cpu_count() or 1)
    return {"one_at_a_time_s": round(alone, 2), "one_batch_s": round(together, 2), "ratio": round(alone / together, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", required=True, type=Path, help="a `mullama demo --out` folder")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=10, help="requests per client")
    parser.add_argument("--max-tokens", type=int, default=40)
    parser.add_argument("--threads", type=int, default=0, help="the server's --threads (0: its default)")
    parser.add_argument("--batch-wait-ms", type=float, default=-1,
                        help="the server's --batch-wait-ms (-1: its default)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of (one at a time, dynamic batching)")
    args = parser.parse_args()
    store = FeatureStore.open(str(args.demo / "store"))
    clips = store.clip_ids()
    print(json.dumps({"generate_ceiling": generate_ceiling(args.demo, store, args.clients, args.max_tokens)}),
          flush=True)
    ratios = []
    for round_number in range(args.repeats):
        results = {}
        for name, batch in (("one at a time", 1), ("dynamic batching", args.clients)):
            wait = ["--batch-wait-ms", str(args.batch_wait_ms)] if args.batch_wait_ms >= 0 else []
            process, port = start_server(args.demo, batch, args.threads, wait)
            try:
                results[name] = {"max_batch_size": batch, **load(port, clips, args.clients, args.requests,
                                                                   args.max_tokens)}
                if batch > 1 and round_number == 0:  # one client alone: the latency of an idle server
                    print("idle server, one client", json.dumps(load(port, clips, 1, args.requests, args.max_tokens)),
                          flush=True)
            finally:
                process.terminate()
                process.wait(30)
            print(f"round {round_number + 1}", name, json.dumps(results[name]), flush=True)
        ratios.append(results["dynamic batching"]["requests_per_s"] / results["one at a time"]["requests_per_s"])
    print(json.dumps({"clients": args.clients, "threads": args.threads, "batch_wait_ms": args.batch_wait_ms,
                      "cpu_threads": os.cpu_count(),
                      "throughput_ratios": [round(r, 2) for r in ratios],
                      "median_ratio": round(float(np.median(ratios)), 2)}))


if __name__ == "__main__":
    main()
