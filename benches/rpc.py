#!/usr/bin/env python3
"""A model split across boards, on loopback: prompt processing (pp) and
generation (tg) with 0, 1 and 2 RPC servers, ferrite (`ferrite bench --rpc`
against `ferrite rpc-server`s) beside llama.cpp (`llama-bench --rpc`
against llama.cpp's own `rpc-server`s), both built on the same ggml
(benches/build-llama-tools.sh), same model, threads and layers (-ngl 99:
every layer on the servers, as llama-bench's default puts them; with two
servers llama.cpp splits them by the memory each reports). Rounds are
interleaved, so drift in the machine's speed hits every row alike.

It also measures the bytes that cross each link per token (ferrite's relay
counts ggml's frames) and turns them into a paper estimate for boards on
gigabit Ethernet: the time the link alone adds per token, at 117 MB/s of
payload and a 0.2 ms round trip per request.

Usage: benches/rpc.py [--model smollm2-135m] [--rounds 3] [-p 64] [-n 32]
           [--threads 2] [--llama DIR]   (default target/llama-tools)
Prints markdown tables.
"""
import argparse
import json
import re
import socket
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FERRITE = ROOT / "target/release/ferrite"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def servers(cmd_for_port, n):
    procs, eps = [], []
    try:
        for _ in range(n):
            port = free_port()
            procs.append(subprocess.Popen(cmd_for_port(port), stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
            deadline = time.time() + 60
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.time() > deadline:
                        sys.exit(f"server on {port} did not start")
                    time.sleep(0.05)
            eps.append(f"127.0.0.1:{port}")
        yield ",".join(eps)
    finally:
        for p in procs:
            p.kill()
            p.wait()


def ferrite_bench(a, rpc, p, n, reps, ngl="99"):
    cmd = [FERRITE, "bench", "-m", a.model, "-t", str(a.threads), "-p", str(p), "-n", str(n),
           "-r", str(reps), "--json"]
    if rpc:
        cmd += ["--rpc", rpc]
        if ngl:
            cmd += ["--n-gpu-layers", ngl]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"ferrite bench failed:\n{r.stderr[-2000:]}")
    m = re.search(r"sent (\d+) bytes and received (\d+) bytes", r.stderr)
    traffic = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    return json.loads(r.stdout), traffic


def llama_bench(a, rpc, p, n, reps):
    cmd = [Path(a.llama) / "llama-bench", "-m", a.path, "-t", str(a.threads), "-p", str(p),
           "-n", str(n), "-r", str(reps), "-o", "json", "-ngl", "99"]
    if rpc:
        cmd += ["--rpc", rpc]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"llama-bench failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout)


def speeds(results):
    out = {}
    for t in results:
        key = "pp" if t["n_prompt"] > 0 else "tg"
        out[key] = t["avg_ts"]
    return out


def per_token(a, rpc, ngl):
    """Bytes per token across the link: one run's bytes (both ways) over
    the tokens it decoded, with the context's set-up (a few small requests)
    counted in. Generation: 4n tokens and llama-bench's one warm-up token;
    prompt: llama-bench's warm-up is a whole prompt run, so 3 runs of -p
    tokens for -r 2."""
    def run(p, n, reps):
        _, (s, r) = ferrite_bench(a, rpc, p, n, reps, ngl)
        return s + r
    tg = run(0, 4 * a.n, 1) / (4 * a.n + 1)
    pp = run(a.p, 0, 2) / (3 * a.p)
    return pp, tg


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-p", type=int, default=64)
    ap.add_argument("-n", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--llama", default=str(ROOT / "target/llama-tools"))
    a = ap.parse_args()
    a.path = subprocess.run([FERRITE, "models", "path", a.model], check=True,
                            capture_output=True, text=True).stdout.strip()
    ferrite_srv = lambda port: [FERRITE, "rpc-server", "-p", str(port), "-t", str(a.threads)]
    llama_srv = lambda port: [Path(a.llama) / "rpc-server", "-p", str(port), "-t",
                              str(a.threads)]
    rows = {}
    for rnd in range(a.rounds):
        for k in (0, 1, 2):
            with servers(ferrite_srv, k) as rpc:
                res, _ = ferrite_bench(a, rpc, a.p, a.n, 3)
                for t, v in speeds(res).items():
                    rows.setdefault((k, t, "ferrite"), []).append(v)
            with servers(llama_srv, k) as rpc:
                for t, v in speeds(llama_bench(a, rpc, a.p, a.n, 3)).items():
                    rows.setdefault((k, t, "llama.cpp"), []).append(v)
        print(f"round {rnd + 1}/{a.rounds} done", file=sys.stderr)
    print(f"{a.model}, {a.threads} threads, pp{a.p} and tg{a.n}, -ngl 99, "
          f"median of {a.rounds} interleaved rounds (each 3 repetitions)\n")
    print("| servers | test | ferrite t/s | llama.cpp t/s | ferrite / llama.cpp |")
    print("| ---: | --- | ---: | ---: | ---: |")
    for k in (0, 1, 2):
        for t in ("pp", "tg"):
            f = statistics.median(rows[(k, t, "ferrite")])
            l = statistics.median(rows[(k, t, "llama.cpp")])
            test = f"pp{a.p}" if t == "pp" else f"tg{a.n}"
            print(f"| {k} | {test} | {f:.2f} | {l:.2f} | {f / l:.2f} |")
    print()
    # Gigabit Ethernet: ~117 MB/s of TCP payload; a request/answer pair
    # costs a round trip (~0.2 ms between two boards on one switch).
    link_bps, rtt_s = 117e6, 0.2e-3
    print("| one server, layers there | test | bytes per token | link time per token at 1 Gb/s |")
    print("| --- | --- | ---: | ---: |")
    for label, ngl in (("all, the output layer too (-ngl 99, llama.cpp's placement)", "99"),
                       ("two thirds by memory, the output layer here (ferrite's default)", None)):
        with servers(ferrite_srv, 1) as rpc:
            pp, tg = per_token(a, rpc, ngl)
        print(f"| {label} | tg | {tg:,.0f} | {tg / link_bps * 1e3 + rtt_s * 1e3:.2f} ms |")
        print(f"| {label} | pp | {pp:,.0f} | {pp / link_bps * 1e3:.3f} ms |")


if __name__ == "__main__":
    main()
