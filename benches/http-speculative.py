#!/usr/bin/env python3
"""Prompt lookup in the HTTP API: `serve --http` plain against `--lookup`,
Qwen2.5-Coder-1.5B, 2 threads, the code-edit question of
benches/speculative.py, 96 tokens greedy; each round starts a fresh server,
warms it with one request, times the next (completion tokens over the
request's wall time, prompt included) and reads /metrics' draft counters.

Usage: python3 benches/http-speculative.py   (after cargo build --release)
"""
import json, subprocess, sys, time, urllib.request, os, signal
FER = str(__import__("pathlib").Path(__file__).resolve().parent.parent / "target/release/ferrite")
EDIT = ("Add type hints to this function and change nothing else:\ndef merge(a, b):\n    out = []\n    i = j = 0\n"
    "    while i < len(a) and j < len(b):\n        if a[i] <= b[j]:\n            out.append(a[i]); i += 1\n        else:\n"
    "            out.append(b[j]); j += 1\n    out.extend(a[i:]); out.extend(b[j:])\n    return out")
def serve(extra, port):
    p = subprocess.Popen([FER, "serve", "--http", f"127.0.0.1:{port}", "-m", "qwen2.5-coder-1.5b", "-t", "2", "-c", "2048", *extra],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1); break
        except Exception: time.sleep(0.2)
    return p
def ask(port):
    body = json.dumps({"model": "qwen2.5-coder-1.5b", "temperature": 0, "max_tokens": 96,
                       "messages": [{"role": "user", "content": EDIT}]}).encode()
    t = time.time()
    r = json.load(urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", body, {"Content-Type": "application/json"})))
    return r["usage"]["completion_tokens"] / (time.time() - t)
res = {}
for rnd in range(2):
    for name, extra in [("plain", []), ("lookup", ["--lookup"])]:
        p = serve(extra, 18600); ask(18600)  # warm-up
        res.setdefault(name, []).append(ask(18600))
        if name == "lookup":
            m = urllib.request.urlopen("http://127.0.0.1:18600/metrics").read().decode()
            res.setdefault("metrics", []).append([l for l in m.splitlines() if l.startswith("ferrite_draft")])
        p.send_signal(signal.SIGTERM); p.wait()
print(json.dumps(res, indent=1))
