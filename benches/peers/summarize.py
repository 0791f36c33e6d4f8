#!/usr/bin/env python3
"""Summarise a benches/run-serving.sh run: key numbers per server and the issue's goals.

Reads loadgen's results.json (sweeps) and agent.json (agent workload); standard library only.

    summarize.py --out DIR --weights JSON --runs DIR... --agents DIR...

--weights maps a run's label to the bytes of weights one decode step reads (for the bandwidth
column), compared with the DRAM read bandwidth measured in DIR (sysbench, else membw.json).
"""

import argparse
import json
import os
import re
import sys

PEERS = ("llama-server", "mistralrs")


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def point(run, load_value):
    for p in run["points"]:
        if abs(p["load"] - load_value) < 1e-9 and p["completed"] > 0:
            return p
    return None


def fmt(x, digits=1):
    if x is None:
        return "–"
    return f"{x:,.{digits}f}"


def ratio(a, b):
    return a / b if a is not None and b else None


def read_bandwidth(out):
    """GB/s of DRAM reads with every CPU busy: sysbench's read test when it ran, else half the
    bytes of membw.py's all-CPU copy (a copy reads half of what it moves)."""
    best = None
    logs = os.path.join(out, "logs")
    for name in os.listdir(logs) if os.path.isdir(logs) else []:
        if name.startswith("sysbench-memory-read-"):
            with open(os.path.join(logs, name)) as f:
                m = re.search(r"([0-9.]+) MiB/sec", f.read())
            if m:
                gbs = float(m.group(1)) * 1.048576 / 1000
                best = gbs if best is None else max(best, gbs)
    if best is None:
        copy = (load(os.path.join(out, "membw.json")) or {}).get("all_cpus_gb_per_s")
        best = copy / 2 if copy else None
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--weights", default="{}")
    ap.add_argument("--runs", nargs="*", default=[])
    ap.add_argument("--agents", nargs="*", default=[])
    args = ap.parse_args()
    weights = json.loads(args.weights or "{}")
    membw = read_bandwidth(args.out)

    runs = {}
    for d in args.runs:
        r = load(os.path.join(d, "results.json"))
        if r:
            runs[r["label"]] = r
    agents = {}
    for d in args.agents:
        a = load(os.path.join(d, "agent.json"))
        if a:
            agents[a["label"]] = a

    out = []
    w = out.append
    if runs:
        loads = sorted({p["load"] for r in runs.values() for p in r["points"]})
        hi = max(loads)
        w(f"### Sweep: {next(iter(runs.values()))['config']['prompt_tokens']} prompt tokens → "
          f"{next(iter(runs.values()))['config']['output_tokens']} output tokens\n")
        w(f"| server | c=1 TTFT p50 ms | c=1 ITL p50 ms | c=1 TPOT ms | c=1 tok/s | "
          f"c=1 weights read GB/s{' (DRAM read: ' + fmt(membw) + ')' if membw else ''} | "
          f"c={hi:g} out tok/s | c={hi:g} TTFT p50 ms | c={hi:g} TTFT p99 ms | errors |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for label, r in runs.items():
            p1, ph = point(r, 1), point(r, hi)
            tpot = p1["tpot_ms"]["mean"] if p1 else None
            gbs = ratio(weights.get(label), tpot / 1e3 if tpot else None)
            gbs = gbs / 1e9 if gbs else None
            errors = sum(p["errors"] for p in r["points"])
            w(f"| {label} | {fmt(p1 and p1['ttft_ms']['p50'])} | {fmt(p1 and p1['itl_ms']['p50'], 2)} "
              f"| {fmt(tpot, 2)} | {fmt(ratio(1000, tpot))} | {fmt(gbs)} "
              f"| {fmt(ph and ph['output_tokens_per_s'])} | {fmt(ph and ph['ttft_ms']['p50'])} "
              f"| {fmt(ph and ph['ttft_ms']['p99'])} | {errors} |")
        w("")
        w("Output tokens/s by concurrency:\n")
        w("| server | " + " | ".join(f"c={x:g}" for x in loads) + " |")
        w("|---|" + "---:|" * len(loads))
        for label, r in runs.items():
            cells = [fmt(point(r, x) and point(r, x)["output_tokens_per_s"]) for x in loads]
            w(f"| {label} | " + " | ".join(cells) + " |")
        w("")

    if agents:
        a0 = next(iter(agents.values()))["config"]
        w(f"### Agent: {a0['conversations']} conversations × {a0['turns']} turns, history to "
          f"{a0['history_tokens']} tokens, {a0['output_tokens']} output tokens per turn\n")
        w("A failed turn ends its conversation, so later turns may count fewer than all of them.\n")
        w("| server | turn 1 TTFT p50 ms | last turn TTFT p50 ms | last turn TTFT p99 ms | "
          "last turn prompt tokens | last turn cached tokens | conversations reaching the last turn "
          "| total s | failed requests |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for label, a in agents.items():
            t1, tn = a["turns"][0], a["turns"][-1]
            done = tn["requests"] - tn["errors"]
            g = (lambda v: v) if done else (lambda v: None)
            w(f"| {label} | {fmt(t1['ttft_ms']['p50'])} | {fmt(g(tn['ttft_ms']['p50']))} "
              f"| {fmt(g(tn['ttft_ms']['p99']))} | {fmt(g(tn['prompt_tokens_mean']), 0)} "
              f"| {fmt(g(tn.get('cached_tokens_mean')), 0)} | {done} of {a['config']['conversations']} "
              f"| {fmt(a['duration_s'])} | {a['errors']} |")
        w("")

    # Goals (issue #4), Hearth against the better peer at the same precision.
    h = runs.get("hearth")
    peers = {k: v for k, v in runs.items() if k in PEERS}
    if h and peers:
        hi = max(p["load"] for p in h["points"])
        w(f"### Goals (Hearth f32 vs peers f32)\n")
        w("| goal | Hearth | best peer | ratio | met? |")
        w("|---|---:|---:|---:|---|")
        ph = point(h, hi)
        tp = {k: point(v, hi) and point(v, hi)["output_tokens_per_s"] for k, v in peers.items()}
        tp = {k: v for k, v in tp.items() if v}
        if ph and tp:
            best = max(tp, key=tp.get)
            r = ph["output_tokens_per_s"] / tp[best]
            w(f"| c={hi:g} output tok/s ≥ 1.5× better peer | {fmt(ph['output_tokens_per_s'])} "
              f"| {fmt(tp[best])} ({best}) | {r:.2f}× | {'yes' if r >= 1.5 else 'no'} |")
        p99 = {k: point(v, hi) and point(v, hi)["ttft_ms"]["p99"] for k, v in peers.items()}
        p99 = {k: v for k, v in p99.items() if v}
        if ph and p99:
            best = min(p99, key=p99.get)
            r = ph["ttft_ms"]["p99"] / p99[best]
            w(f"| c={hi:g} p99 TTFT ≤ 0.5× better peer | {fmt(ph['ttft_ms']['p99'])} ms "
              f"| {fmt(p99[best])} ms ({best}) | {r:.2f}× | {'yes' if r <= 0.5 else 'no'} |")
        for hl, ll, prec in (("hearth", "llama-server", "f32"), ("hearth-q8_0", "llama-server-q8_0", "q8_0")):
            a, b = runs.get(hl), runs.get(ll)
            a1, b1 = a and point(a, 1), b and point(b, 1)
            if a1 and b1:
                # Judged on the mean gap (TPOT), which counts stalls; the p50 gap is shown beside it.
                r = a1["tpot_ms"]["mean"] / b1["tpot_ms"]["mean"]
                w(f"| c=1 inter-token latency ≤ 1.1× llama.cpp ({prec}): mean (p50) | "
                  f"{fmt(a1['tpot_ms']['mean'], 2)} ({fmt(a1['itl_ms']['p50'], 2)}) ms "
                  f"| {fmt(b1['tpot_ms']['mean'], 2)} ({fmt(b1['itl_ms']['p50'], 2)}) ms "
                  f"| {r:.2f}× | {'yes' if r <= 1.1 else 'no'} |")
            elif prec == "q8_0" and b1:
                w(f"| c=1 inter-token latency ≤ 1.1× llama.cpp (q8_0) | no quantized path | "
                  f"{fmt(b1['tpot_ms']['mean'], 2)} ms | – | no |")
        ha = agents.get("hearth")
        pa = {k: v for k, v in agents.items() if k in PEERS}
        # A peer none of whose conversations reached the last turn has no last-turn TTFT.
        last = lambda a: (a["turns"][-1]["ttft_ms"]["p50"]
                          if a["turns"][-1]["requests"] > a["turns"][-1]["errors"] else None)
        pa = {k: v for k, v in pa.items() if last(v)}
        hn = agents.get("hearth-noprefix")
        if ha and last(ha) and hn and last(hn):
            r = last(hn) / last(ha)
            w(f"| agent last-turn TTFT ≥ 5× lower with prefix caching than without | {fmt(last(ha))} ms "
              f"| {fmt(last(hn))} ms (hearth-noprefix) | {r:.1f}× lower | {'yes' if r >= 5 else 'no'} |")
        if ha and last(ha) and pa:
            best = min(pa, key=lambda k: last(pa[k]))
            r = last(ha) / last(pa[best])
            w(f"| agent last-turn TTFT p50 < both peers | {fmt(last(ha))} ms | {fmt(last(pa[best]))} ms "
              f"({best}) | {r:.2f}× | {'yes' if r < 1 else 'no'} |")
        w("")
    print("\n".join(out))


if __name__ == "__main__":
    sys.exit(main())
