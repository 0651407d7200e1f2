#!/usr/bin/env python3
"""How far two builds of ggml put the goldens' logits apart.

Reads two JSON files written by the integration test `golden_scores_dump`
(`FERRITE_SCORES_OUT=FILE cargo test --release golden_scores_dump -- --ignored`,
once per build: portable x86, native x86, aarch64 under qemu, ...) and prints,
per golden, the largest difference of a logit and of a lead (the forced
token's logit minus its rival's, which is what decides greedy decoding: a
shift common to all logits of a position does not change it).
Usage: benches/golden-margins.py A.json B.json
"""
import json
import sys

a = dict(json.load(open(sys.argv[1])))
b = dict(json.load(open(sys.argv[2])))
worst_logit = worst_lead = 0.0
for name in a:
    d_logit = max(abs(x["logit"] - y["logit"]) for x, y in zip(a[name], b[name]))
    d_lead = max(
        abs((x["logit"] - x["rival_logit"]) - (y["logit"] - y["rival_logit"]))
        for x, y in zip(a[name], b[name])
    )
    worst_logit, worst_lead = max(worst_logit, d_logit), max(worst_lead, d_lead)
    flips = [
        x["piece"]
        for x, y in zip(a[name], b[name])
        if (x["logit"] > x["rival_logit"]) != (y["logit"] > y["rival_logit"])
    ]
    print(f"{name:>10}: max |d logit| {d_logit:.3f}, max |d lead| {d_lead:.3f}, greedy flips at {flips}")
print(f"{'all':>10}: max |d logit| {worst_logit:.3f}, max |d lead| {worst_lead:.3f}")
