"""Starts the real `hearth` binary for the client-library tests."""

import json
import os
import pathlib
import subprocess
import threading

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def hearth_bin() -> str:
    path = os.environ.get("HEARTH_BIN", str(ROOT / "target" / "debug" / "hearth"))
    if not os.path.exists(path):
        raise RuntimeError(f"{path} is missing: build it with `cargo build -p hearth-cli`")
    return path


@pytest.fixture(scope="session")
def hearth_url():
    proc = subprocess.Popen(
        [hearth_bin(), "--log-format", "json", "serve", "--addr", "127.0.0.1:0", "--device", "cpu",
         "--model", str(ROOT / "models" / "tiny-llama")],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )
    addr = None
    for line in proc.stderr:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        fields = record.get("fields", {})
        if fields.get("message") == "listening":
            addr = fields["addr"]
            break
    if addr is None:
        proc.kill()
        raise RuntimeError("hearth exited before it listened")
    # Keep draining logs so the daemon never blocks on a full pipe.
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    yield f"http://{addr}"
    proc.terminate()
    proc.wait(timeout=60)
