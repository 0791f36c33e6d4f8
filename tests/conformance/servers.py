"""Starting the two servers under comparison on one predictor: Cog's own (coglet, from the
PyPI packages `cog` and `coglet`) and Hearth. coglet serves the OpenAPI document that
`cog build` would have written into `.cog/openapi_schema.json`; Cog's CLI is not on PyPI, so
that file is Hearth's own `/openapi.json` for the same predictor (read off the predictor by
Cog's SDK), which makes coglet check inputs against the same schema."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_setup(port, limit=300):
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health-check", timeout=2) as r:
                if json.load(r)["status"] not in ("STARTING",):
                    return
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server on {port} never finished setup")


class Server:
    def __init__(self, proc, port):
        self.proc, self.port = proc, port

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_hearth(binary, package, workdir, cache):
    port = free_port()
    env = {**os.environ, "HEARTH_CACHE_DIR": str(cache), "HEARTH_LOG": "warn"}
    proc = subprocess.Popen([binary, "serve", "--model", str(package), "--addr", f"127.0.0.1:{port}",
                             "--device", "cpu"], env=env, cwd=workdir,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_setup(port)
    return Server(proc, port)


def start_coglet(package, workdir, openapi):
    """coglet on a copy of `package` holding `openapi` as its built schema."""
    copy = Path(workdir) / ("coglet-" + Path(package).name)
    shutil.copytree(package, copy)
    if openapi:
        (copy / ".cog").mkdir()
        (copy / ".cog" / "openapi_schema.json").write_text(json.dumps(openapi))
    port = free_port()
    python = sys.executable
    env = {**os.environ, "PORT": str(port), "COG_PREDICT_TYPE_STUB": "predict.py:Predictor",
           "PATH": f"{Path(python).parent}:{os.environ['PATH']}"}
    # `cog build` turns cog.yaml's concurrency.max into this setting of the image.
    config = yaml.safe_load((Path(package) / "cog.yaml").read_text())
    slots = (config.get("concurrency") or {}).get("max")
    if slots:
        env["COG_MAX_CONCURRENCY"] = str(slots)
    proc = subprocess.Popen([python, "-m", "cog.server.http", "--host", "127.0.0.1"], cwd=copy,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_setup(port)
    return Server(proc, port)
