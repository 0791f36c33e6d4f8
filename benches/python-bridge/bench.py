"""Per-prediction overhead of serving a Cog predictor: Hearth's Python bridge against Cog's own
server (coglet), side by side, on the same machine and predictor.

The predictors return their input (`identity`, and `identity-stream` as one SSE chunk), so what
is measured is everything around `predict()`: HTTP, input checking, the hop to the Python
worker and back, and the answer. For each server, mode (sync JSON, SSE) and number of
concurrent callers (1, 8), callers send back-to-back requests on kept-alive connections;
latencies are per request, client-side. Both servers get 16 slots for the 8 callers. A request
answered "busy" (coglet's 409, Hearth's 429) is sent again at once and counted; only answered
predictions are timed.

Usage: python bench.py --hearth BIN --python PYTHON [--requests N]
PYTHON is an interpreter with `cog==0.23.1` installed (which brings coglet).
"""

import argparse
import http.client
import json
import os
import platform
import shutil
import tempfile
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BODY = json.dumps({"input": {"text": "hello"}}).encode()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port, model_prefix, limit=300):
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", f"{model_prefix}/health-check")
            status = json.loads(conn.getresponse().read())["status"]
            if status == "READY":
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server on {port} never became ready")


def start_coglet(python, package, port, openapi):
    """coglet on a copy of `package` holding `openapi` where `cog build` would write it (coglet
    streams only for a predictor its schema marks `x-cog-streaming`)."""
    copy = Path(tempfile.mkdtemp(prefix="bench-coglet-")) / package.name
    shutil.copytree(package, copy)
    (copy / ".cog").mkdir()
    (copy / ".cog" / "openapi_schema.json").write_text(json.dumps(openapi))
    package = copy
    env = {**os.environ, "PORT": str(port), "COG_PREDICT_TYPE_STUB": "predict.py:Predictor",
           "COG_MAX_CONCURRENCY": "16", "PATH": f"{Path(python).parent}:{os.environ['PATH']}"}
    proc = subprocess.Popen([python, "-m", "cog.server.http", "--host", "127.0.0.1"], cwd=package,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_ready(port, "")
    return proc


def start_hearth(binary, package, port, cache):
    env = {**os.environ, "HEARTH_CACHE_DIR": cache, "HEARTH_LOG": "warn"}
    proc = subprocess.Popen([binary, "serve", "--model", str(package), "--addr", f"127.0.0.1:{port}"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=Path(cache))
    wait_ready(port, "")
    return proc


class Busy(Exception):
    """Every slot was taken (409 from coglet, 429 from Hearth)."""


def one(conn, stream):
    headers = {"content-type": "application/json"}
    if stream:
        headers["accept"] = "text/event-stream"
    started = time.perf_counter()
    conn.request("POST", "/predictions", body=BODY, headers=headers)
    response = conn.getresponse()
    body = response.read()
    elapsed = time.perf_counter() - started
    if response.status in (409, 429):
        raise Busy()
    if response.status != 200:
        raise RuntimeError(f"{response.status}: {body[:200]!r}")
    if stream and b"hello" not in body:
        raise RuntimeError(f"no output in {body[:200]!r}")
    return elapsed


def measure(port, stream, callers, requests):
    latencies, errors, refused = [], [], []
    per_caller = max(1, requests // callers)

    def caller():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine, busy = [], 0
        try:
            for i in range(10 + per_caller):  # the first 10 warm up and are not counted
                while True:
                    try:
                        elapsed = one(conn, stream)
                        break
                    except Busy:
                        busy += 1
                if i >= 10:
                    mine.append(elapsed)
        except Exception as e:  # noqa: BLE001 — reported below
            errors.append(e)
        latencies.extend(mine)
        refused.append(busy)

    threads = [threading.Thread(target=caller) for _ in range(callers)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{len(errors)} callers failed: {errors[0]}")
    latencies.sort()
    p = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000  # noqa: E731
    return {"p50": p(0.50), "p99": p(0.99), "rps": len(latencies) / wall, "n": len(latencies),
            "busy": sum(refused)}


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--hearth", required=True)
    parser.add_argument("--python", required=True)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--cache", default=str(HERE.parents[1] / "target" / "test-cache"))
    args = parser.parse_args()
    os.makedirs(args.cache, exist_ok=True)
    rows = []
    for mode, package in (("sync", HERE / "identity"), ("sse", HERE / "identity-stream")):
        openapi = None
        for server in ("hearth", "coglet"):
            port = free_port()
            if server == "coglet":
                proc = start_coglet(args.python, package, port, openapi)
            else:
                proc = start_hearth(args.hearth, package, port, args.cache)
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.request("GET", "/openapi.json")
                openapi = json.loads(conn.getresponse().read())
            try:
                for callers in (1, 8):
                    r = measure(port, mode == "sse", callers, args.requests)
                    rows.append((mode, callers, server, r))
                    print(f"{mode:4} {callers} callers {server:6}: p50 {r['p50']:.2f} ms  "
                          f"p99 {r['p99']:.2f} ms  {r['rps']:.0f} req/s  (n={r['n']}, busy {r['busy']})",
                          file=sys.stderr, flush=True)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    print(f"\nCPU: {cpu_name()}, {os.cpu_count()} cores; {args.requests} requests per row\n")
    print("| mode | callers | server | p50 ms | p99 ms | req/s | busy answers |")
    print("|---|---|---|---|---|---|---|")
    for mode, callers, server, r in rows:
        print(f"| {mode} | {callers} | {server} | {r['p50']:.2f} | {r['p99']:.2f} | "
              f"{r['rps']:.0f} | {r['busy']} |")


if __name__ == "__main__":
    main()
