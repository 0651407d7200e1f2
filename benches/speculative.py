#!/usr/bin/env python3
"""Speculative decoding: ferrite plain, with a draft model and with prompt
lookup, against llama.cpp's own `llama-speculative-simple` (draft model) and
`llama-bench` tg (plain), same models, prompts, threads and token budget;
rounds interleaved so drift in the machine's speed hits every row alike.

Every run continues the same text (the Qwen chat template applied by hand,
then `ferrite ask --raw`), so all of them decode the same prompt tokens.
Generation speed is what each tool prints for its generated tokens:
ferrite's `--stats` (`gen N tok X tok/s`, after the first token),
llama-speculative-simple's `decoded N tokens in T seconds, speed: X t/s`.

Usage: benches/speculative.py [--threads 2] [--rounds 3] [-n 128]
           [--target qwen2.5-coder-1.5b] [--draft qwen2.5-coder-0.5b]
           [--llama DIR]   (default target/llama-server, built by
                            benches/build-llama-server.sh)
Prints a markdown table: median tok/s per prompt and configuration, the
draft tokens accepted, and ratios to plain ferrite and to llama.cpp's.
"""
import argparse
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FERRITE = ROOT / "target/release/ferrite"

PROMPTS = {
    "code": "Write a Python function that returns the n-th Fibonacci number "
    "iteratively, with a docstring and three doctests.",
    "prose": "Explain in a few paragraphs why the sky is blue, for a curious "
    "twelve-year-old.",
    "edit": "Add type hints to this function and change nothing else:\n"
    "def merge(a, b):\n    out = []\n    i = j = 0\n"
    "    while i < len(a) and j < len(b):\n        if a[i] <= b[j]:\n"
    "            out.append(a[i]); i += 1\n        else:\n"
    "            out.append(b[j]); j += 1\n"
    "    out.extend(a[i:]); out.extend(b[j:])\n    return out",
}


def chatml(q):
    """Qwen2.5's template, as its GGUF renders a one-question chat."""
    return (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a "
        "helpful assistant.<|im_end|>\n<|im_start|>user\n"
        f"{q}<|im_end|>\n<|im_start|>assistant\n"
    )


def model_path(name):
    return subprocess.run(
        [FERRITE, "models", "path", name], check=True, capture_output=True, text=True
    ).stdout.strip()


def ferrite(a, target, extra, prompt):
    cmd = [FERRITE, "ask", "--raw", "-m", target, "-t", str(a.threads), "--temp", "0",
           "-n", str(a.n), "-c", "2048", "--stats", *extra, prompt]
    r = subprocess.run(cmd, capture_output=True, text=True, check=True)
    m = re.search(r"gen (\d+) tok ([\d.]+) tok/s", r.stderr)
    d = re.search(r"draft (\d+)/(\d+) accepted", r.stderr)
    acc = f"{d.group(1)}/{d.group(2)}" if d else ""
    return float(m.group(2)), int(m.group(1)), acc


def llama_spec(a, target, draft, prompt, kind="draft-simple", n_max=3):
    exe = Path(a.llama) / "llama-speculative-simple"
    cmd = [exe, "-m", target, "-p", prompt, "-n", str(a.n), "-t", str(a.threads),
           "--temp", "0", "-c", "2048", "-s", "1", "--spec-type", kind]
    if kind == "draft-simple":
        cmd += ["-md", draft, "-td", str(a.threads), "--spec-draft-n-max", str(n_max),
                "--spec-draft-n-min", "0", "--spec-draft-p-min", "0"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    out = r.stdout + r.stderr
    m = re.search(r"decoded\s+(\d+) tokens in\s+([\d.]+) seconds, speed:\s+([\d.]+) t/s", out)
    if not m:
        sys.exit(f"llama-speculative-simple failed:\n{out[-2000:]}")
    nd = re.search(r"n_drafted\s*=\s*(\d+)", out)
    na = re.search(r"n_accept\s*=\s*(\d+)", out)
    acc = f"{na.group(1)}/{nd.group(1)}" if nd and na else ""
    return float(m.group(3)), int(m.group(1)), acc


def llama_bench_tg(a, target):
    exe = Path(a.llama) / "llama-bench"
    r = subprocess.run([exe, "-m", target, "-t", str(a.threads), "-p", "0", "-n", str(a.n),
                        "-r", "2", "-o", "json"], capture_output=True, text=True, check=True)
    import json
    return json.loads(r.stdout)[0]["avg_ts"]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("-n", type=int, default=128)
    p.add_argument("--target", default="qwen2.5-coder-1.5b")
    p.add_argument("--draft", default="qwen2.5-coder-0.5b",
                   help="the draft model, or none for the draft-free rows only")
    p.add_argument("--llama", default=str(ROOT / "target/llama-server"))
    a = p.parse_args()
    target = model_path(a.target)
    draft = None if a.draft == "none" else model_path(a.draft)
    have_llama = (Path(a.llama) / "llama-speculative-simple").exists()
    configs = {
        "ferrite": lambda q: ferrite(a, target, [], q),
        "ferrite --draft": lambda q: ferrite(a, target, ["--draft", draft], q),
        "ferrite --draft --draft-max 16": lambda q: ferrite(
            a, target, ["--draft", draft, "--draft-max", "16"], q),
        "ferrite --lookup": lambda q: ferrite(a, target, ["--lookup"], q),
        "ferrite --lookup --draft-max 16": lambda q: ferrite(
            a, target, ["--lookup", "--draft-max", "16"], q),
    }
    if have_llama:
        configs["llama-speculative-simple -md"] = lambda q: llama_spec(a, target, draft, q)
        configs["llama-speculative-simple ngram-simple"] = lambda q: llama_spec(
            a, target, draft, q, "ngram-simple")
    if draft is None:  # --draft none: the draft-free rows only
        configs = {k: v for k, v in configs.items() if "draft" not in k and "-md" not in k}
    ref_name = "llama-speculative-simple -md" if draft else "llama-speculative-simple ngram-simple"
    speeds = {(pn, c): [] for pn in PROMPTS for c in configs}
    accepted = {}
    for r in range(a.rounds):
        for pn, q in PROMPTS.items():
            for c, run in configs.items():
                ts, n, acc = run(chatml(q))
                speeds[(pn, c)].append(ts)
                accepted[(pn, c)] = acc
                print(f"round {r + 1} {pn:5} {c:30} {ts:7.2f} tok/s ({n} tok, draft {acc or '-'})",
                      file=sys.stderr, flush=True)
    tg = llama_bench_tg(a, target) if (Path(a.llama) / "llama-bench").exists() else None
    print(f"\n{a.target} (draft {a.draft}), {a.threads} threads, {a.n} tokens, greedy, "
          f"median of {a.rounds} interleaved rounds"
          + (f"; llama-bench tg{a.n} = {tg:.2f} tok/s" if tg else "") + "\n")
    print(f"| prompt | configuration | tok/s | accepted/drafted | × ferrite plain | × `{ref_name}` |"
          + (" × llama-bench tg |" if tg else ""))
    print("| --- | --- | ---: | ---: | ---: | ---: |" + (" ---: |" if tg else ""))
    for pn in PROMPTS:
        base = statistics.median(speeds[(pn, "ferrite")])
        ref = statistics.median(speeds[(pn, ref_name)]) if have_llama else None
        for c in configs:
            v = statistics.median(speeds[(pn, c)])
            row = (f"| {pn} | `{c}` | {v:.2f} | {accepted[(pn, c)] or '-'} | {v / base:.2f} | "
                   + (f"{v / ref:.2f} |" if ref else "- |"))
            if tg:
                row += f" {v / tg:.2f} |"
            print(row)


if __name__ == "__main__":
    main()
