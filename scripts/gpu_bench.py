#!/usr/bin/env python3
"""GPU-side measurements for scripts/gpu-check.sh. Needs PyTorch with CUDA; `hf` needs transformers.

  gpu_bench.py membw --out membw.json
      Device-to-device copy bandwidth, bytes read plus bytes written: the ceiling that decode
      bandwidth utilisation is measured against.
  gpu_bench.py hf --model DIR --batch-sizes 1,16,64 --prompt-tokens 512 --output-tokens 128 --out hf.json
      The baseline: the same package through transformers' generate(), bf16, greedy, every
      sequence forced to the full output length. Batch size B stands for B concurrent streams.
  gpu_bench.py report --dir OUT
      Reads what gpu-check.sh left in OUT and writes OUT/gpu-check.md (a section for
      docs/benchmarks.md) and OUT/summary.json.
"""

import argparse
import glob
import json
import os
import re
import statistics
import time


def cuda_env():
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("PyTorch sees no CUDA device")
    props = torch.cuda.get_device_properties(0)
    return {
        "gpu": props.name,
        "gpu_memory_gib": round(props.total_memory / 2**30, 1),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
    }


def membw(args):
    import torch

    n = args.gib << 30
    src = torch.empty(n, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    seconds = []
    for _ in range(args.repeats):
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        seconds.append(start.elapsed_time(end) / 1e3)
    result = cuda_env() | {
        "copy_bytes": n,
        "repeats": args.repeats,
        # Each copy reads n bytes and writes n bytes.
        "copy_GBps_median": 2 * n / statistics.median(seconds) / 1e9,
        "copy_GBps_best": 2 * n / min(seconds) / 1e9,
    }
    write_json(args.out, result)
    print(json.dumps(result))


def hf(args):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16)
    except TypeError:  # transformers before `dtype` replaced `torch_dtype`
        model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.bfloat16)
    model = model.to("cuda").eval()
    vocab = model.config.vocab_size
    prompt, output = args.prompt_tokens, args.output_tokens
    gen = torch.Generator().manual_seed(0)

    def generate(ids, new_tokens):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,  # like loadgen's ignore_eos
                pad_token_id=0,
            )
        torch.cuda.synchronize()
        assert out.shape[1] == ids.shape[1] + new_tokens, out.shape
        return time.perf_counter() - t0

    points = []
    for batch in args.batch_sizes:
        ids = torch.randint(0, vocab, (batch, prompt), generator=gen).to("cuda")
        generate(ids, 2)  # warm-up
        ttft = statistics.median(generate(ids, 1) for _ in range(3))
        total = generate(ids, output)
        itl = (total - ttft) / (output - 1)
        points.append(
            {
                "streams": batch,
                "prompt_tokens": prompt,
                "output_tokens": output,
                "ttft_ms": ttft * 1e3,
                "itl_ms": itl * 1e3,
                "e2e_ms": total * 1e3,
                "output_tokens_per_s": batch * output / total,
            }
        )
        print(json.dumps(points[-1]), flush=True)
        del ids
        torch.cuda.empty_cache()
    result = cuda_env() | {
        "transformers": transformers.__version__,
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "points": points,
    }
    write_json(args.out, result)


# ---------------------------------------------------------------------------------------------
# The report


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_json(path, value):
    with open(path, "w") as f:
        json.dump(value, f, indent=2)
        f.write("\n")


def model_bytes(model_dir):
    """Bytes one decode step must read for the weights, and KV-cache bytes per token of context."""
    cfg = read_json(os.path.join(model_dir, "config.json"))
    if cfg is None:
        return None, None
    weights = sum(os.path.getsize(p) for p in glob.glob(os.path.join(model_dir, "*.safetensors")))
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    kv_per_token = 2 * cfg["num_hidden_layers"] * kv_heads * head_dim * 2  # K and V, bf16
    return weights, kv_per_token


def decode_bw(weights, kv_per_token, streams, prompt, output, itl_ms):
    """Bytes a decode step reads (all weights once, plus every running stream's KV cache at its
    mean context) over the step time (the inter-token latency)."""
    if not (weights and itl_ms):
        return None
    context = prompt + output / 2
    return (weights + streams * kv_per_token * context) / (itl_ms / 1e3)


def parity_summary(out_dir):
    rows = []
    for log in sorted(glob.glob(os.path.join(out_dir, "parity-*.log"))):
        dtype = os.path.basename(log)[len("parity-") : -len(".log")]
        text = open(log, errors="replace").read()
        worst, worst_batch = {}, {}
        for family, err in re.findall(r"^(\w+)\s+.*?rel err ([0-9.e+-]+)$", text, re.M):
            worst[family] = max(worst.get(family, 0.0), float(err))
        for family, diff in re.findall(r"^(\w+)\s+packed vs alone.*rel diff ([0-9.e+-]+)$", text, re.M):
            worst_batch[family] = max(worst_batch.get(family, 0.0), float(diff))
        result = re.findall(r"^test result: (\w+)\. (\d+) passed; (\d+) failed", text, re.M)
        rows.append(
            {
                "dtype": dtype,
                "result": " / ".join(f"{r} ({p} passed, {f} failed)" for r, p, f in result) or "did not run",
                "worst_rel_err": worst,
                "worst_batch_diff": worst_batch,
            }
        )
    return rows


def fmt(value, digits=1):
    return "–" if value is None else f"{value:.{digits}f}"


def report(args):
    out = args.dir
    env = read_json(os.path.join(out, "env.json")) or {}
    bw = read_json(os.path.join(out, "membw.json")) or {}
    hf_run = read_json(os.path.join(out, "hf.json")) or {}
    weights, kv_per_token = model_bytes(args.model) if args.model else (None, None)
    ceiling = bw.get("copy_GBps_median")

    rows = []
    for results in sorted(glob.glob(os.path.join(out, "hearth-c*", "results.json"))):
        run = read_json(results)
        for p in run["points"]:
            streams = int(p["load"])
            prompt, output = p["prompt_tokens_mean"], p["output_tokens_mean"]
            bps = decode_bw(weights, kv_per_token, streams, prompt, output, p["itl_ms"]["p50"])
            rows.append(
                {
                    "engine": "hearth (candle, CUDA, bf16)",
                    "streams": streams,
                    "ttft_ms_p50": p["ttft_ms"]["p50"],
                    "ttft_ms_p99": p["ttft_ms"]["p99"],
                    "itl_ms_p50": p["itl_ms"]["p50"],
                    "itl_ms_p99": p["itl_ms"]["p99"],
                    "output_tokens_per_s": p["output_tokens_per_s"],
                    "requests": p["requests"],
                    "errors": p["errors"],
                    "decode_GBps": bps and bps / 1e9,
                }
            )
    for p in hf_run.get("points", []):
        bps = decode_bw(
            weights, kv_per_token, p["streams"], p["prompt_tokens"], p["output_tokens"], p["itl_ms"]
        )
        rows.append(
            {
                "engine": f"transformers {hf_run.get('transformers', '')} generate (bf16)",
                "streams": p["streams"],
                "ttft_ms_p50": p["ttft_ms"],
                "ttft_ms_p99": None,
                "itl_ms_p50": p["itl_ms"],
                "itl_ms_p99": None,
                "output_tokens_per_s": p["output_tokens_per_s"],
                "requests": p["streams"],
                "errors": 0,
                "decode_GBps": bps and bps / 1e9,
            }
        )
    for r in rows:
        r["decode_bw_util"] = r["decode_GBps"] / ceiling if r["decode_GBps"] and ceiling else None

    parity = parity_summary(out)
    summary = {"env": env, "membw": bw, "weights_bytes": weights, "kv_bytes_per_token": kv_per_token,
               "parity": parity, "rows": rows}
    write_json(os.path.join(out, "summary.json"), summary)

    lines = [
        f"## GPU check, {env.get('date', time.strftime('%Y-%m-%d'))}",
        "",
        f"- GPU: {bw.get('gpu', env.get('gpu', '?'))}, driver {env.get('driver', '?')}; "
        f"hearth {env.get('hearth', '?')}; PyTorch {bw.get('torch', '?')} (CUDA {bw.get('torch_cuda', '?')})",
        f"- Measured copy bandwidth (device-to-device, read + write): "
        f"{fmt(ceiling, 0)} GB/s median, {fmt(bw.get('copy_GBps_best'), 0)} GB/s best",
        f"- Model: `hearth synth --preset llama3-8b` (random bf16 weights, "
        f"{fmt(weights and weights / 1e9, 2)} GB; KV {kv_per_token} bytes per token); "
        f"workload {env.get('workload', '?')}",
        "",
        "Parity with transformers' logits on the GPU (engine-parity-tests, HEARTH_TEST_DEVICE=cuda):",
        "",
        "| dtype | result | worst rel err (per family) | worst packed-vs-alone |",
        "|---|---|---|---|",
    ]
    for p in parity:
        errs = ", ".join(f"{k} {v:.1e}" for k, v in sorted(p["worst_rel_err"].items()))
        batch = ", ".join(f"{k} {v:.1e}" for k, v in sorted(p["worst_batch_diff"].items()))
        lines.append(f"| {p['dtype']} | {p['result']} | {errs or '–'} | {batch or '–'} |")
    lines += [
        "",
        "| engine | streams | TTFT p50 (ms) | TTFT p99 (ms) | ITL p50 (ms) | ITL p99 (ms) | output tok/s | decode GB/s | of copy BW |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        util = "–" if r["decode_bw_util"] is None else f"{100 * r['decode_bw_util']:.0f}%"
        errors = f" ({r['errors']} errors)" if r["errors"] else ""
        lines.append(
            f"| {r['engine']}{errors} | {r['streams']} | {fmt(r['ttft_ms_p50'])} | {fmt(r['ttft_ms_p99'])} | "
            f"{fmt(r['itl_ms_p50'], 2)} | {fmt(r['itl_ms_p99'], 2)} | {fmt(r['output_tokens_per_s'], 0)} | "
            f"{fmt(r['decode_GBps'], 0)} | {util} |"
        )
    lines += [
        "",
        "Decode GB/s = (weight bytes + streams × KV bytes per token × (prompt + output/2)) / ITL p50: "
        "the bytes one decode step must read, over the time a step takes. Hearth's TTFT includes "
        "queueing behind other streams' prefill; transformers' is one batched prefill (B prompts "
        "at once) and its ITL is (generate time − TTFT) / (output − 1).",
        "",
    ]
    with open(os.path.join(out, "gpu-check.md"), "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("membw")
    p.add_argument("--gib", type=int, default=4)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", required=True)
    p = sub.add_parser("hf")
    p.add_argument("--model", required=True)
    p.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16, 64])
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--output-tokens", type=int, default=128)
    p.add_argument("--out", required=True)
    p = sub.add_parser("report")
    p.add_argument("--dir", required=True)
    p.add_argument("--model", help="the benchmarked package, for its weight and KV sizes")
    args = parser.parse_args()
    {"membw": membw, "hf": hf, "report": report}[args.command](args)


if __name__ == "__main__":
    main()
