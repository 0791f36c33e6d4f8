"""The request corpus both servers answer, and how an answer is reduced to what must match:
status codes, JSON shapes (key sets, status values, error locations) and event vocabularies."""

import http.client
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Webhooks:
    """Records webhook bodies posted to it."""

    def __init__(self):
        self.received = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                outer.received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"


def request(port, method, path, body=None, headers=None, raw=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    all_headers = {"content-type": "application/json", **(headers or {})}
    conn.request(method, path, body=data, headers=all_headers)
    response = conn.getresponse()
    text = response.read().decode()
    return response.status, response.getheader("content-type", ""), text


def settle(port, limit=10):
    """Waits until the server has a free slot again. coglet frees a slot a moment after it
    answered, so a request sent at once may be refused as busy; the corpus compares answers,
    not that race."""
    deadline = time.time() + limit
    while time.time() < deadline:
        _, _, text = request(port, "GET", "/health-check")
        if json.loads(text)["status"] == "READY":
            return
        time.sleep(0.02)


def shape(value):
    """A JSON value's shape: objects by their keys (recursively), lists by their first item."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__


def sse_events(text):
    names = []
    for block in text.split("\n\n"):
        for line in block.splitlines():
            if line.startswith("event:"):
                names.append(line.split(":", 1)[1].strip())
    return names


def json_or_text(text):
    try:
        return json.loads(text)
    except ValueError:
        return text


def echo_corpus(port, hooks):
    """What an `echo` server answers, reduced; keys name each case."""
    out = {}
    status, _, text = request(port, "GET", "/")
    out["index"] = (status, sorted(json.loads(text)))
    status, _, text = request(port, "GET", "/health-check")
    health = json.loads(text)
    out["health"] = (status, health["status"], sorted(health), sorted(health["setup"]))
    status, _, text = request(port, "GET", "/openapi.json")
    document = json.loads(text)
    out["openapi"] = (status, document["components"]["schemas"]["Input"],
                      document["components"]["schemas"]["Output"])

    status, _, text = request(port, "POST", "/predictions", {"input": {"text": "a b", "token": "s3"}})
    prediction = json.loads(text)
    out["sync"] = (status, prediction["status"], prediction["output"])
    out["sync.logs"] = "echoing 3 characters" in prediction["logs"]
    out["sync.secret_hidden"] = "s3" not in text.replace('"s3"', "") or "s3" not in prediction["logs"]

    settle(port)
    for name, body in [
        ("missing", {"input": {}}),
        ("out_of_range", {"input": {"text": "x", "repeat": 101}}),
        ("wrong_type", {"input": {"text": "x", "repeat": "many"}}),
    ]:
        status, _, text = request(port, "POST", "/predictions", body)
        answer = json_or_text(text)
        locs = [d.get("loc") for d in answer.get("detail", [])] if isinstance(answer, dict) else None
        out[name] = (status, locs)
    status, _, _ = request(port, "POST", "/predictions", raw=b"{not json")
    out["bad_json"] = status

    status, content_type, text = request(port, "POST", "/predictions", {"input": {"text": "a b"}},
                                         {"accept": "text/event-stream"})
    events = [e for e in sse_events(text) if e != "log"]
    out["sse"] = (status, content_type.split(";")[0], events)

    settle(port)
    status, _, text = request(port, "POST", "/predictions/missing-id/cancel", {})
    out["cancel_unknown"] = status

    status, _, text = request(port, "PUT", "/predictions/put-1", {"input": {"text": "once"}})
    first = json.loads(text)
    settle(port)
    status2, _, text = request(port, "PUT", "/predictions/put-1", {"input": {"text": "once"}})
    out["idempotent_put"] = (status, first["id"], first["status"], status2, json.loads(text)["id"])
    status, _, _ = request(port, "PUT", "/predictions/put-2", {"id": "other", "input": {"text": "x"}})
    out["put_id_mismatch"] = status

    settle(port)
    hooks.received.clear()
    status, _, text = request(port, "POST", "/predictions",
                              {"input": {"text": "a b c", "delay": 0.1}, "webhook": hooks.url},
                              {"prefer": "respond-async"})
    accepted = json.loads(text)
    deadline = time.time() + 30
    while not any(h.get("status") == "succeeded" for h in hooks.received) and time.time() < deadline:
        time.sleep(0.05)
    statuses = [h["status"] for h in hooks.received]
    done = [h for h in hooks.received if h["status"] == "succeeded"]
    # Which webhook arrives last is not compared: coglet sends them concurrently, so its
    # terminal webhook may overtake the last `output` one (Hearth sends them in order).
    out["async"] = (status, accepted["status"], statuses[0] if statuses else None,
                    len(done), done[0]["output"] if done else None)
    settle(port)
    status, _, text = request(port, "PUT", "/predictions/to-cancel",
                              {"input": {"text": "a b c d e f g h", "delay": 0.5}},
                              {"prefer": "respond-async"})
    time.sleep(0.8)
    cancel_status, _, cancel_text = request(port, "POST", "/predictions/to-cancel/cancel", {})
    deadline = time.time() + 30
    final = None
    while time.time() < deadline:
        _, _, text = request(port, "PUT", "/predictions/to-cancel", {"input": {"text": "x"}})
        final = json.loads(text)
        if final["status"] in ("succeeded", "failed", "canceled"):
            break
        time.sleep(0.1)
    out["cancel"] = (status, cancel_status, json_or_text(cancel_text), final and final["status"])
    return out


def async_corpus(port, hooks):
    """An async predictor with four slots: four overlap, a fifth finds none free."""
    out = {}
    results = []

    def one(i):
        results.append(request(port, "POST", "/predictions", {"input": {"seconds": 1.5}}))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    deadline = time.time() + 1.0
    busy = None
    while time.time() < deadline and busy != "BUSY":
        _, _, text = request(port, "GET", "/health-check")
        busy = json.loads(text)["status"]
    out["busy_health"] = busy
    status, _, text = request(port, "POST", "/predictions", {"input": {"seconds": 0}})
    out["fifth"] = (status, shape(json_or_text(text)))
    for t in threads:
        t.join()
    out["four"] = sorted((s, shape(json_or_text(t))) for s, _, t in results)
    out["overlapped"] = [json_or_text(t).get("output") for _, _, t in results].count(4)
    return out


def setup_fails_corpus(port, hooks):
    out = {}
    status, _, text = request(port, "GET", "/health-check")
    health = json.loads(text)
    out["health"] = (status, health["status"], health["setup"]["status"],
                     "weights.bin is missing" in health["setup"].get("logs", ""))
    status, _, text = request(port, "POST", "/predictions", {"input": {"text": "x"}})
    out["predict"] = (status, shape(json_or_text(text)))
    return out


# A 2×2 red PNG.
PNG = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAEklEQVR4nGP4z8DAwMDAxMDAAAAL"
       "+QEBqgA/DAAAAABJRU5ErkJggg==")


def image_corpus(port, hooks):
    """The canonical Cog example's shape: a `Path` in, a scaled `Path` out."""
    import base64

    out = {}
    status, _, text = request(port, "POST", "/predictions", {"input": {"image": PNG, "scale": 2}})
    prediction = json_or_text(text)
    output = prediction.get("output") or ""
    head, _, data = output.partition(",")
    size = None
    if head == "data:image/png;base64":
        png = base64.b64decode(data)
        size = (int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big"))
    out["scaled"] = (status, prediction.get("status"), head, size)
    status, _, text = request(port, "POST", "/predictions", {"input": {"scale": 2}})
    out["missing_image"] = (status, [d.get("loc") for d in json_or_text(text).get("detail", [])])
    status, _, text = request(port, "POST", "/predictions", {"input": {"image": PNG, "scale": 11}})
    out["scale_out_of_range"] = (status, [d.get("loc") for d in json_or_text(text).get("detail", [])])
    status, _, text = request(port, "POST", "/predictions", {"input": {"image": "/etc/hostname"}})
    answer = json_or_text(text)
    out["local_path"] = (status, answer.get("status") if isinstance(answer, dict) else None)
    return out
