#!/usr/bin/env python3
"""Throughput and time to first token of `ferrite serve --http` against
llama.cpp's `llama-server`, both serving the same GGUF with the same
threads, context and parallel slots, at 1, 2, 4 and 8 concurrent clients.

Both servers run for the whole bench; the rounds alternate between them
(ferrite, llama-server, ferrite, ...) so that a machine that slows down
slows both. Each client streams one chat answer (OpenAI's API, through the
official `openai` client) to a prompt of its own (the round and client
number come first, so no server answers from a cached prompt), with
greedy decoding and `max_tokens`.

Per server and concurrency it prints: total generated tokens per second
(all clients' completion tokens over the wall time from the first request
to the last answer), the mean per-client rate (completion tokens over the
time from its first token to its last), and the median time to first
token. The ratio column is ferrite / llama-server (throughput: higher is
better for ferrite; TTFT: lower is).

Usage: benches/http-vs-llama-server.py FERRITE LLAMA_SERVER MODEL.gguf
       [--threads 2] [--ctx 4096] [--parallel 8] [--rounds 3]
       [--max-tokens 64] [--clients 1,2,4,8] [--kv-unified] [--json OUT]
Needs: pip install openai; benches/build-llama-server.sh for LLAMA_SERVER.
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

import openai

TOPICS = ["a lighthouse keeper", "a lost robot", "a small dragon", "a river town",
          "a clockmaker", "a winter garden", "a night train", "a deep-sea diver"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(base, proc, what):
    t0 = time.time()
    while time.time() - t0 < 300:
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.2)
    sys.exit(f"{what} did not start")


def one(client, model, prompt, max_tokens, out, i):
    t0 = time.perf_counter()
    first = last = None
    tokens = 0
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
        temperature=0, stream=True, stream_options={"include_usage": True})
    for c in stream:
        now = time.perf_counter()
        if c.choices and c.choices[0].delta.content:
            first = first or now
            last = now
        if c.usage:
            tokens = c.usage.completion_tokens
    out[i] = {"start": t0, "first": first or t0, "last": last or t0, "tokens": tokens}


def round_(client, model, n, max_tokens, tag):
    out = [None] * n
    threads = [threading.Thread(target=one, args=(
        client, model, f"[{tag}-{i}] Write a short story about {TOPICS[i % len(TOPICS)]}.",
        max_tokens, out, i)) for i in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = max(o["last"] for o in out) - t0
    total = sum(o["tokens"] for o in out)
    per = [(o["tokens"] - 1) / (o["last"] - o["first"]) for o in out if o["last"] > o["first"]]
    return {"total_tps": total / wall, "client_tps": statistics.mean(per) if per else 0.0,
            "ttft_ms": statistics.median((o["first"] - o["start"]) * 1e3 for o in out),
            "tokens": total}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ferrite")
    ap.add_argument("llama_server")
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--clients", default="1,2,4,8")
    ap.add_argument("--kv-unified", action="store_true",
                    help="both share one KV cache across slots (default: each slot its own, llama-server's default with -np)")
    ap.add_argument("--json")
    a = ap.parse_args()
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    fp, lp = free_port(), free_port()
    common = ["-m", a.model, "-t", str(a.threads), "-c", str(a.ctx)]
    procs = {
        "ferrite": subprocess.Popen(
            [a.ferrite, "serve", "--http", f"127.0.0.1:{fp}", "--parallel", str(a.parallel),
             "--kv-unified", "on" if a.kv_unified else "off",
             "--http-queue", "64", *common], env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        "llama-server": subprocess.Popen(
            [a.llama_server, "--host", "127.0.0.1", "--port", str(lp), "-np", str(a.parallel),
             *(["--kv-unified"] if a.kv_unified else []),
             "-b", "512", "-ub", "512", *common], env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    }
    bases = {"ferrite": f"http://127.0.0.1:{fp}", "llama-server": f"http://127.0.0.1:{lp}"}
    try:
        for name, p in procs.items():
            wait_ready(bases[name], p, name)
        clients = {n: openai.OpenAI(base_url=f"{b}/v1", api_key="none", max_retries=0, timeout=600)
                   for n, b in bases.items()}
        models = {n: c.models.list().data[0].id for n, c in clients.items()}
        for n in clients:  # warm up: page the weights in
            round_(clients[n], models[n], 1, 8, "warm")
        results = {}
        for c in [int(x) for x in a.clients.split(",")]:
            runs = {n: [] for n in clients}
            for r in range(a.rounds):
                for n in clients:
                    runs[n].append(round_(clients[n], models[n], c, a.max_tokens, f"{r}{c}"))
            results[c] = {n: {k: statistics.median(x[k] for x in v) for k in v[0]} for n, v in runs.items()}
    finally:
        for p in procs.values():
            p.terminate()
            p.wait()
    print(f"threads {a.threads}, ctx {a.ctx}, parallel {a.parallel}, kv-unified {a.kv_unified}, "
          f"max_tokens {a.max_tokens}, "
          f"medians of {a.rounds} interleaved rounds")
    print("| clients | ferrite tok/s (total) | llama-server tok/s (total) | ratio "
          "| ferrite tok/s per client | llama-server per client | ratio "
          "| ferrite TTFT ms | llama-server TTFT ms | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for c, r in results.items():
        f, l = r["ferrite"], r["llama-server"]
        print(f"| {c} | {f['total_tps']:.1f} | {l['total_tps']:.1f} | {f['total_tps'] / l['total_tps']:.2f} "
              f"| {f['client_tps']:.1f} | {l['client_tps']:.1f} | {f['client_tps'] / l['client_tps']:.2f} "
              f"| {f['ttft_ms']:.0f} | {l['ttft_ms']:.0f} | {f['ttft_ms'] / l['ttft_ms']:.2f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
