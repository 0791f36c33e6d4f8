"""Starts the real `hearth` binary for the client-library tests, with the tiny local model and
two upstream providers (OpenAI and Anthropic wire formats) pointed at a fake on loopback."""

import contextlib
import json
import os
import pathlib
import subprocess
import threading

import pytest

# pytest puts this directory on sys.path before importing this file.
import fake_provider

ROOT = pathlib.Path(__file__).resolve().parents[2]

# Handed to the daemon for the fake providers; it must never come back out.
UPSTREAM_KEY = "sk-client-tests-secret"


def hearth_bin() -> str:
    path = os.environ.get("HEARTH_BIN", str(ROOT / "target" / "debug" / "hearth"))
    if not os.path.exists(path):
        raise RuntimeError(f"{path} is missing: build it with `cargo build -p hearth-cli`")
    return path


def write_config(directory: pathlib.Path, upstream: str) -> pathlib.Path:
    config = directory / "hearth.toml"
    config.write_text(f"""
[gateway]
ledger_path = "{directory / 'ledger.sqlite'}"

[[providers]]
name = "up-openai"
kind = "openai"
base_url = "{upstream}/v1"
api_key_env = "HEARTH_CLIENT_TEST_KEY"

[[providers]]
name = "up-anthropic"
kind = "anthropic"
base_url = "{upstream}"
api_key_env = "HEARTH_CLIENT_TEST_KEY"

[[models]]
id = "upstream-gpt"
routes = ["up-openai/gpt-fake"]

[[models]]
id = "upstream-claude"
routes = ["up-anthropic/claude-fake"]

[[models]]
id = "upstream-priced"
routes = ["up-openai/gpt-fake"]
input_price_per_mtok = 1.0
output_price_per_mtok = 2.0

[[models]]
id = "upstream-slow"
routes = ["up-openai/gpt-slow"]
input_price_per_mtok = 1.0
output_price_per_mtok = 2.0
""")
    return config


def start_hearth(args, directory, env):
    """Starts `hearth serve ARGS` on a free port in `directory`; answers the process and the
    address it listens on once it does."""
    proc = subprocess.Popen(
        [hearth_bin(), "--log-format", "json", "serve", "--addr", "127.0.0.1:0", "--device", "cpu",
         *args],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=directory,
        env={**os.environ, **env},
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
    return proc, addr


@contextlib.contextmanager
def hearth_with_fakes(directory, env=None):
    """The tiny local model and the fake upstreams behind a daemon in `directory` (with `env`
    added); yields its base URL and stops both afterwards."""
    upstream = fake_provider.start()
    config = write_config(directory, f"http://127.0.0.1:{upstream.server_address[1]}")
    proc, addr = start_hearth(
        ["--model", str(ROOT / "models" / "tiny-llama"), "--config", str(config)], directory,
        {"HEARTH_CLIENT_TEST_KEY": UPSTREAM_KEY, **(env or {})},
    )
    try:
        yield f"http://{addr}"
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        upstream.shutdown()


@pytest.fixture(scope="session")
def hearth_url(tmp_path_factory):
    with hearth_with_fakes(tmp_path_factory.mktemp("hearth")) as url:
        yield url
