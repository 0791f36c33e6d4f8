"""A fake upstream provider on loopback for the client-library tests.

It answers OpenAI chat completions (`POST /v1/chat/completions`) and Anthropic messages
(`POST /v1/messages`) with hand-written server-sent events shaped like the vendors' own. Hearth
always streams from its upstreams, so streamed answers are all it needs to speak. The OpenAI
model `gpt-slow` streams for about a minute (a word every 0.1 s), for tests that watch or cancel
a run while it streams.
"""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TEXTS = ["Hello", " from", " upstream"]
PROMPT_TOKENS = 11
COMPLETION_TOKENS = 7
SLOW_MODEL = "gpt-slow"
SLOW_WORDS = 600
SLOW_GAP_SECONDS = 0.1


def _openai_frames(texts=TEXTS):
    def chunk(delta, finish=None):
        return {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
                "model": "gpt-fake", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    yield chunk({"role": "assistant", "content": ""})
    for text in texts:
        yield chunk({"content": text})
    yield chunk({}, "stop")
    yield {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": "gpt-fake",
           "choices": [], "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS,
                                    "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS}}


def _anthropic_events():
    yield "message_start", {"type": "message_start", "message": {
        "id": "msg_fake", "type": "message", "role": "assistant", "model": "claude-fake", "content": [],
        "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": 1}}}
    yield "content_block_start", {"type": "content_block_start", "index": 0,
                                  "content_block": {"type": "text", "text": ""}}
    for text in TEXTS:
        yield "content_block_delta", {"type": "content_block_delta", "index": 0,
                                      "delta": {"type": "text_delta", "text": text}}
    yield "content_block_stop", {"type": "content_block_stop", "index": 0}
    yield "message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                            "usage": {"output_tokens": COMPLETION_TOKENS}}
    yield "message_stop", {"type": "message_stop"}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):  # noqa: N802 (the standard library's name)
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        slow = False
        if self.path.endswith("/chat/completions"):
            slow = json.loads(body or b"{}").get("model") == SLOW_MODEL
            texts = [" word"] * SLOW_WORDS if slow else TEXTS
            frames = [f"data: {json.dumps(c)}\n\n" for c in _openai_frames(texts)] + ["data: [DONE]\n\n"]
        elif self.path.endswith("/messages"):
            frames = [f"event: {name}\ndata: {json.dumps(d)}\n\n" for name, d in _anthropic_events()]
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("connection", "close")
        self.end_headers()
        try:
            for frame in frames:
                self.wfile.write(frame.encode())
                self.wfile.flush()
                if slow:
                    time.sleep(SLOW_GAP_SECONDS)
        except (BrokenPipeError, ConnectionResetError):
            pass  # Hearth hung up: the run was cancelled.
        self.close_connection = True

    def log_message(self, *args):
        pass


def start():
    """Starts the fake in a background thread; returns its server (call `.shutdown()` to stop)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
