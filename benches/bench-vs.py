#!/usr/bin/env python3
"""Interleaved pp/tg comparison of llama-bench-compatible commands.

Each tool is `NAME=COMMAND` where COMMAND prints llama-bench's JSON (a list
of objects with n_prompt, n_gen, avg_ts): `llama-bench ... -o json` or
`ferrite bench ... --json`. The tools run in turn, round after round, with
the order rotated every round so that drift in the machine's speed hits all
of them alike; each run is itself `-r REPS` repetitions. Prints every round
and then, per model and test, the median tokens/s of each tool and the median
of the per-round ratios against the first tool (the reference).

Usage:
  benches/bench-vs.py --rounds 5 --threads 2 -p 128 -n 32 --reps 3 \\
      --model smollm2=PATH --model gemma3=PATH \\
      stock=target/llama-tools-stock/llama-bench ferrite=target/release/ferrite
A tool whose COMMAND ends in `ferrite` runs `ferrite bench`; any other runs as
llama-bench. Output: a Markdown table on stdout (progress on stderr).
"""

import argparse
import json
import statistics
import subprocess
import sys


def run(cmd, model, a):
    common = ["-m", model, "-t", str(a.threads), "-p", str(a.p), "-n", str(a.n), "-r", str(a.reps)]
    if cmd.endswith("ferrite"):
        argv = [cmd, "bench", *common, "--json"]
    else:
        argv = [cmd, *common, "-o", "json"]
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    res = {}
    for o in json.loads(out):
        test = f"pp{o['n_prompt']}" if o["n_prompt"] else f"tg{o['n_gen']}"
        res[test] = o["avg_ts"]
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-p", type=int, default=128)
    ap.add_argument("-n", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--model", action="append", required=True, help="NAME=PATH")
    ap.add_argument("tools", nargs="+", help="NAME=COMMAND; the first is the reference")
    a = ap.parse_args()
    tools = [t.split("=", 1) for t in a.tools]
    models = [m.split("=", 1) for m in a.model]
    ts = {}  # (model, test, tool) -> [t/s per round]
    for r in range(a.rounds):
        for mname, mpath in models:
            order = tools[r % len(tools):] + tools[: r % len(tools)]
            for tname, cmd in order:
                for test, v in run(cmd, mpath, a).items():
                    ts.setdefault((mname, test, tname), []).append(v)
                    print(f"round {r + 1} {mname} {test} {tname}: {v:.2f} t/s", file=sys.stderr)
    ref = tools[0][0]
    head = "| model | test | " + " | ".join(f"{t} t/s" for t, _ in tools)
    head += " | " + " | ".join(f"{t}/{ref} (min–max)" for t, _ in tools[1:]) + " |"
    print(head)
    print("|" + " --- |" * (2 + len(tools) + len(tools) - 1))
    for mname, _ in models:
        tests = sorted({k[1] for k in ts if k[0] == mname}, key=lambda t: (t[:2] != "pp", t))
        for test in tests:
            base = ts[(mname, test, ref)]
            row = [mname, test] + [f"{statistics.median(ts[(mname, test, t)]):.2f}" for t, _ in tools]
            for t, _ in tools[1:]:
                rs = [x / y for x, y in zip(ts[(mname, test, t)], base)]
                row.append(f"**{statistics.median(rs):.3f}** ({min(rs):.2f}–{max(rs):.2f})")
            print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
