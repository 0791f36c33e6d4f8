#!/usr/bin/env python3
"""Memory bandwidth by copying large numpy arrays: one thread, then one process per CPU at once.

    membw.py OUT.json

A copy reads and writes every byte, so GB/s counts both (as STREAM's "copy" does). Arrays are
far larger than any cache. Prints one line per measurement and writes them to OUT.json.
"""

import json
import multiprocessing as mp
import os
import sys
import time

import numpy as np

REPS = 8


def copy_gbps(n_bytes, reps=REPS, barrier=None):
    src = np.ones(n_bytes // 8)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # touch every page first
    best = float("inf")
    for _ in range(reps):
        if barrier is not None:
            barrier.wait()
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.nbytes / best / 1e9


def worker(n_bytes, barrier, queue):
    queue.put(copy_gbps(n_bytes, barrier=barrier))


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else None
    one = copy_gbps(1 << 30)
    print(f"numpy copy, 1 thread, 1 GiB: {one:.1f} GB/s (read + write)", file=sys.stderr)
    n = os.cpu_count() or 1
    barrier, queue = mp.Barrier(n), mp.Queue()
    procs = [mp.Process(target=worker, args=((1 << 30) // n * 2, barrier, queue)) for _ in range(n)]
    for p in procs:
        p.start()
    rates = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    # Each process's best repetition ran alongside the others' (they start together), so the sum
    # is the machine's copy bandwidth with every CPU busy.
    allcpu = sum(rates)
    print(f"numpy copy, {n} processes at once, {2 / n:.2g} GiB each: {allcpu:.1f} GB/s", file=sys.stderr)
    result = {
        "method": f"numpy.copyto of float64 arrays, best of {REPS}; GB/s counts read + write",
        "one_thread_gb_per_s": round(one, 2),
        "all_cpus_gb_per_s": round(allcpu, 2),
        "cpus": n,
        "gb_per_s": round(max(one, allcpu), 2),
    }
    if out:
        with open(out, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main()
