"""The demonstrations scripts/replicas.sh runs against two gateways behind nginx (see there).

Each prints what it saw and whether it held; the exit status is 0 only if all held. Standard
library only.
"""

import concurrent.futures
import http.client
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request

LB, G1, G2 = (os.environ[k] for k in ("HEARTH_DEMO_LB", "HEARTH_DEMO_G1", "HEARTH_DEMO_G2"))
WORK = os.environ["HEARTH_DEMO_WORK"]
G1_PORT = os.environ["HEARTH_DEMO_G1_PORT"]
REDIS_PORT = os.environ["HEARTH_DEMO_REDIS_PORT"]
RESULTS = []


def post(base, path, body, headers=None, timeout=300):
    """(status, headers, JSON body) of a POST."""
    request = urllib.request.Request(
        base + path, json.dumps(body).encode(), {"content-type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read() or b"null")


def get(base, path, headers=None):
    request = urllib.request.Request(base + path, headers=headers or {})
    with urllib.request.urlopen(request, timeout=300) as response:
        return response.read().decode()


def chat(model, messages, max_tokens=8, **extra):
    return {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, **extra}


def frames(text):
    """(id, data) of each whole SSE frame."""
    out = []
    for block in text.split("\n\n"):
        lines = block.splitlines()
        ids = [l[4:] for l in lines if l.startswith("id: ")]
        data = [l[6:] for l in lines if l.startswith("data: ")]
        if ids and data:
            out.append((ids[0], data[0]))
    return out


def check(name, held, saw):
    RESULTS.append(held)
    print(f"[{'held' if held else 'FAILED'}] {name}: {saw}", flush=True)


def wait_health(base):
    for _ in range(300):
        try:
            get(base, "/health")
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{base} never answered")


def resume_after_sigkill():
    """A stream from gateway 1, which is then killed; the rest comes through nginx (gateway 2)."""
    host = G1.removeprefix("http://")
    conn = http.client.HTTPConnection(host, timeout=300)
    body = chat("agent", [{"role": "user", "content": "Keep talking"}], max_tokens=1500, ignore_eos=True, stream=True)
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"content-type": "application/json"})
    response = conn.getresponse()
    run_id = response.getheader("x-hearth-run-id")
    text = ""
    while True:
        chunk = response.read1(4096)
        if not chunk:
            raise RuntimeError(f"the stream ended before event 5: {text[:300]}")
        text += chunk.decode()
        whole = text[: text.rfind("\n\n") + 2]
        seen = frames(whole)
        if seen and int(seen[-1][0].split(".")[0]) >= 5:
            break
    pid = int(open(f"{WORK}/gateway-{G1_PORT}.pid").read())
    os.kill(pid, signal.SIGKILL)
    conn.close()
    rest = frames(get(LB, f"/v1/runs/{run_id}/events", {"last-event-id": seen[-1][0]}))
    ids = [i for i, _ in seen + rest]
    errors = [d for _, d in rest if '"error"' in d]
    last_done = bool(rest) and rest[-1][1] == "[DONE]"
    held = len(ids) == len(set(ids)) and (last_done or (len(errors) == 1 and '"error"' in rest[-1][1]))
    ending = "the whole rest, ending [DONE]" if last_done else f"{len(errors)} explicit error event at the end"
    check("resume after SIGKILL", held, f"{len(seen)} frames from gateway 1, {len(rest)} more through nginx, no frame twice, {ending}")
    for _ in range(100):
        status = json.loads(get(LB, f"/v1/runs/{run_id}"))
        if status.get("ledger"):
            break
        time.sleep(0.1)
    check("one ledger record for the killed run", bool(status.get("ledger")), f"run {status['status']}, ledger {status.get('ledger', {}).get('status')}")
    subprocess.run(["bash", "-c", f"start_gateway {G1_PORT}"], check=True)
    wait_health(G1)


def exact_limit():
    """500 concurrent requests through nginx (both gateways) against 100 a minute."""
    headers = {"x-hearth-metadata": json.dumps({"team": "limited"})}
    body = chat("agent", [{"role": "user", "content": "hi"}], max_tokens=1)

    def one(_):
        return post(LB, "/v1/chat/completions", body, headers)[0]

    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        statuses = list(pool.map(one, range(500)))
    admitted, refused = statuses.count(200), statuses.count(429)
    check("100 a minute across two gateways", admitted == 100 and refused == 400, f"{admitted} admitted, {refused} refused with 429, others {len(statuses) - admitted - refused}")


def spend_budget():
    """Rounds of 40 concurrent priced requests through nginx against a budget of 1 a day."""
    headers = {"x-hearth-metadata": json.dumps({"team": "budget"})}
    body = chat("agent-priced", [{"role": "user", "content": "Spend"}], max_tokens=16)

    def one(_):
        return post(LB, "/v1/chat/completions", body, headers)[0]

    statuses = []
    for _ in range(5):
        with concurrent.futures.ThreadPoolExecutor(40) as pool:
            statuses += list(pool.map(one, range(40)))
    time.sleep(0.5)
    usage = json.loads(get(LB, "/v1/usage?group_by=metadata.team"))["data"]
    spent = sum(float(g["cost"]) for g in usage if g["key"] == "budget")
    admitted, refused = statuses.count(200), statuses.count(429)
    held = spent <= 1.0 and admitted > 0 and refused > 0 and admitted + refused == len(statuses)
    check("a spend budget of 1 under concurrent load across two gateways", held, f"{admitted} admitted, {refused} refused with 429, spent {spent:.4f} (the ledger, both gateways)")


def cache_across_replicas():
    body = chat("agent", [{"role": "user", "content": "Remember me"}])
    first = post(G1, "/v1/chat/completions", body, {"x-hearth-cache-ttl": "60"})
    second = post(G2, "/v1/chat/completions", body, {"x-hearth-cache-ttl": "60"})
    same = first[2]["choices"][0]["message"] == second[2]["choices"][0]["message"]
    statuses = (first[1].get("x-hearth-cache-status"), second[1].get("x-hearth-cache-status"))
    check("cache miss on gateway 1, hit on gateway 2", statuses == ("MISS", "HIT") and same, f"{statuses}, same answer: {same}")
    # The same kept answer, asked for as a stream, replays as one.
    request = urllib.request.Request(
        G2 + "/v1/chat/completions", json.dumps({**body, "stream": True}).encode(),
        {"content-type": "application/json", "x-hearth-cache-ttl": "60"},
    )
    with urllib.request.urlopen(request, timeout=300) as response:
        status = response.headers.get("x-hearth-cache-status")
        chunks = [json.loads(d) for _, d in frames(response.read().decode()) if d != "[DONE]"]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
    whole = first[2]["choices"][0]["message"]["content"]
    check("the kept answer as a stream on gateway 2", status == "HIT" and text == whole, f"{status}, same text: {text == whole}")


def agent_workload(model, tag):
    histories = [[{"role": "system", "content": f"[{tag} agent {c}] " + "Answer briefly. Use the tools when they help. Never invent facts. " * 6}] for c in range(8)]
    last = [None] * 8
    for turn in range(10):
        for c in [(i + turn) % 8 for i in range(8)]:
            histories[c].append({"role": "user", "content": f"Step {turn}: what next?"})
            status, _, answer = post(LB, "/v1/chat/completions", chat(model, histories[c]))
            assert status == 200, answer
            histories[c].append({"role": "assistant", "content": answer["choices"][0]["message"]["content"]})
            usage = answer["usage"]
            last[c] = (usage.get("prompt_tokens_details", {}).get("cached_tokens", 0), usage["prompt_tokens"])
    return last


def affinity():
    with_affinity = agent_workload("agent", "affinity")
    round_robin = agent_workload("agent-rr", "round-robin")
    share = lambda r: sum(c for c, _ in r) / sum(p for _, p in r)
    held = all(c >= 0.9 * p for c, p in with_affinity)
    check("agent workload, 8 conversations x 10 turns over 2 engines through both gateways", held,
          f"last-turn prompt tokens from the prefix cache: affinity {share(with_affinity):.3f}, round-robin {share(round_robin):.3f}")


def redis_restart():
    body = chat("agent", [{"role": "user", "content": "Still there?"}], max_tokens=2)
    ok = lambda: [post(LB, "/v1/chat/completions", body)[0] for _ in range(6)]
    before = ok()
    subprocess.run(["redis-cli", "-p", REDIS_PORT, "shutdown", "nosave"], capture_output=True)
    during = ok()
    subprocess.run(["bash", "-c", "start_redis"], check=True)
    time.sleep(1)
    after = ok()
    alive = all(get(base, "/health") for base in (G1, G2))
    held = set(before) == {200} and set(during) == {200} and set(after) == {200} and alive
    check("Redis stopped and restarted between requests (limits fail open)", held, f"before {before}, during {during}, after {after}, both gateways up: {alive}")


for demo in (cache_across_replicas, exact_limit, spend_budget, affinity, resume_after_sigkill, redis_restart):
    try:
        demo()
    except Exception as error:  # a demonstration that breaks is one that did not hold
        check(demo.__name__, False, repr(error))

print(f"{sum(RESULTS)} of {len(RESULTS)} held", flush=True)
raise SystemExit(0 if all(RESULTS) else 1)
