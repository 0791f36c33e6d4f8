#!/usr/bin/env python3
"""Time to first token for a prompt whose prefix the server has just seen.

    benches/repeated-prompt.py URL MODEL [--words 200] [--rounds 5] [--seed 0]

An agent re-sends its history with a few new tokens each call; a server with prefix caching
should answer such a call almost as fast as a one-token prompt. For each round this sends a
fresh ~200-token prompt of random words once (cold, not timed), then the same prompt followed
by 1, 4 and 16 new words (each timed, streamed, one output token). Each timed request is the
previous one plus new words, so the cached prefix always covers the earlier text. Works against
any OpenAI-compatible `/v1/completions` (Hearth, llama-server). Prints one line of JSON per
suffix length with the median and worst TTFT and the prompt tokens the server reported.
Standard library only.
"""

import argparse
import http.client
import json
import random
import statistics
import sys
import time
import urllib.parse

WORDS = (
    "river stone garden light window paper music table silver morning orange letter forest "
    "market winter candle bridge harbor engine pocket meadow violet thunder castle lantern "
    "mirror shadow feather velvet basket pepper cotton marble copper whisper ladder rocket "
    "saddle tunnel walnut zipper anchor blossom canvas dragon falcon glacier hammer island"
).split()


def stream_ttft(url: str, model: str, prompt: str) -> tuple[float, int | None]:
    """Seconds to the first streamed text, and the prompt tokens the server reports."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=600)
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": 1,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    if response.status != 200:
        raise SystemExit(f"{url} answered {response.status}: {response.read()[:300]!r}")
    ttft, prompt_tokens = None, None
    for raw in response:
        line = raw.decode().strip()
        if not line.startswith("data:") or line == "data: [DONE]":
            continue
        event = json.loads(line[5:])
        if ttft is None and any(c.get("text") for c in event.get("choices", [])):
            ttft = time.perf_counter() - start
        usage = event.get("usage") or {}
        prompt_tokens = usage.get("prompt_tokens", prompt_tokens)
    conn.close()
    if ttft is None:
        raise SystemExit(f"{url} streamed no text")
    return ttft, prompt_tokens


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("model")
    parser.add_argument("--words", type=int, default=200, help="words in the first prompt")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    suffixes = (1, 4, 16)
    times: dict[int, list[float]] = {n: [] for n in suffixes}
    tokens: dict[int, int | None] = {}
    for round_ in range(args.rounds):
        prompt = " ".join(rng.choice(WORDS) for _ in range(args.words))
        stream_ttft(args.url, args.model, prompt)
        for n in suffixes:
            prompt += " " + " ".join(rng.choice(WORDS) for _ in range(n))
            ttft, tokens[n] = stream_ttft(args.url, args.model, prompt)
            times[n].append(ttft)
        print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
    for n in suffixes:
        print(
            json.dumps(
                {
                    "new_words": n,
                    "prompt_tokens": tokens[n],
                    "ttft_p50_ms": round(1000 * statistics.median(times[n]), 1),
                    "ttft_max_ms": round(1000 * max(times[n]), 1),
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
