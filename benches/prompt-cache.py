#!/usr/bin/env python3
"""Time to first token from a cold start, with and without `--prompt-cache`:
a ~300-token system prompt, a 16-token question, `ferrite ask` started anew
each time (model load, the system prompt's state loaded or evaluated, the
question, the first token), rounds interleaved.

Usage: benches/prompt-cache.py [--model qwen2.5-coder-1.5b] [--threads 2] [--rounds 5]
Prints a markdown row per configuration: median seconds from process start
to the first answer byte on stdout, and ferrite's own `--stats` ttft (from
the question to the first token; the system prompt counts there only when
it is not cached).
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FERRITE = ROOT / "target/release/ferrite"

SYSTEM = (
    "You are the assistant of a workshop that repairs bicycles, sewing machines and "
    "small engines. You answer customers' questions about opening hours, prices, "
    "repair times and what to bring. The workshop opens from eight to six on weekdays "
    "and from nine to one on Saturdays; it is closed on Sundays and public holidays. "
    "A standard bicycle service costs forty euros and takes two days; a wheel true "
    "costs fifteen; a new chain with fitting costs twenty-five. Sewing machines are "
    "serviced for fifty euros in about a week, parts extra. Small engines (lawn "
    "mowers, chainsaws, generators) are quoted after inspection, which costs twenty "
    "euros and is deducted from the repair. Customers should bring the item clean, "
    "with any accessories and, for engines, with the fuel drained. Payment is by card "
    "or cash. The workshop does not sell new bicycles but keeps a few refurbished ones, "
    "from one hundred and twenty euros, each with a six-month guarantee. Answer in one "
    "or two sentences, politely, and if a question is not about the workshop, say that "
    "you can only help with the workshop. Never invent prices or hours that are not "
    "given here. If a customer asks for an appointment, tell them to call the workshop "
    "during opening hours, because you cannot book appointments yourself."
)
QUESTION = "How much does a standard bicycle service cost and how long does it take?"


def run(a, model, home, cache):
    cmd = [FERRITE, "ask", "-m", model, "-t", str(a.threads), "--temp", "0", "-n", "4",
           "--stats", "--system", SYSTEM, QUESTION]
    if cache:
        cmd.insert(2, "--prompt-cache")
    env = dict(os.environ, FERRITE_HOME=home)
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    p.stdout.read(1)
    first = time.perf_counter() - t0
    _, err = p.communicate()
    if p.returncode:
        sys.exit(err.decode())
    m = re.search(r"prompt (\d+) tok \((\d+) cached\).*ttft (\d+) ms", err.decode())
    return first, int(m.group(3)), int(m.group(1)), int(m.group(2))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    model = subprocess.run([FERRITE, "models", "path", a.model], check=True,
                           capture_output=True, text=True).stdout.strip()
    home = tempfile.mkdtemp()
    run(a, model, home, True)  # writes the state: every later cached run is a cold start with it on disk
    rows = {"without --prompt-cache": [], "--prompt-cache (state on disk)": []}
    info = {}
    for _ in range(a.rounds):
        for name, cache in [("without --prompt-cache", False), ("--prompt-cache (state on disk)", True)]:
            first, ttft, n, cached = run(a, model, home, cache)
            rows[name].append((first, ttft))
            info[name] = (n, cached)
            print(f"{name:32} first byte {first:6.2f} s, ttft {ttft} ms", file=sys.stderr)
    print(f"\n{a.model}, {a.threads} threads, median of {a.rounds} cold starts\n")
    print("| configuration | prompt tokens (cached) | process start to first token | `--stats` ttft |")
    print("| --- | ---: | ---: | ---: |")
    for name, v in rows.items():
        n, cached = info[name]
        print(f"| {name} | {n} ({cached}) | {statistics.median(x[0] for x in v):.2f} s | "
              f"{statistics.median(x[1] for x in v):.0f} ms |")


if __name__ == "__main__":
    main()
