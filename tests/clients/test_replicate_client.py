"""The official `replicate` client against Hearth's Replicate-API facade: run, stream, and
create / get / cancel, for Python predictors (tests/fixtures/python) and a native model."""

import json
import time
import urllib.request

import pytest
import replicate

from conftest import ROOT, start_hearth

FIXTURES = ROOT / "tests" / "fixtures" / "python"


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hearth-replicate")
    proc, addr = start_hearth(
        ["--model", str(FIXTURES / "echo"), "--model", str(FIXTURES / "image"),
         "--model", str(ROOT / "models" / "tiny-llama")],
        directory, {"HEARTH_CACHE_DIR": str(ROOT / "target" / "test-cache")},
    )
    base = f"http://{addr}"
    for name in ("echo", "image"):
        deadline = time.time() + 300
        while True:
            with urllib.request.urlopen(f"{base}/cog/{name}/health-check") as response:
                if json.load(response)["status"] != "STARTING":
                    break
            assert time.time() < deadline, f"{name} never finished setup"
            time.sleep(0.2)
    yield replicate.Client(api_token="not-checked", base_url=base)
    proc.terminate()
    proc.wait(timeout=60)


def test_run_waits_for_the_output(client):
    assert client.run("hearth/echo", input={"text": "hello there"}) == ["hello ", "there "]


def test_run_returns_files_as_file_outputs(client):
    # A 1×1 PNG, scaled 4×.
    pixel = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4"
             "nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC")
    output = client.run("hearth/image", input={"image": pixel, "scale": 4})
    data = output.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(data[16:20], "big") == 4


def test_run_serves_a_native_model_too(client):
    output = client.run("hearth/tiny-llama", input={"prompt": "hi", "max_tokens": 4})
    assert isinstance(output, list) and len(output) >= 1


def test_stream_yields_the_output_as_it_comes(client):
    events = list(client.stream("hearth/echo", input={"text": "a b c"}))
    # str() of an event is its output text, empty for other events.
    assert "".join(str(e) for e in events) == "a b c "
    assert events[-1].event.value == "done"


def test_create_get_and_cancel(client):
    prediction = client.models.predictions.create(
        model="hearth/echo", input={"text": " ".join("w" * 40), "delay": 0.2})
    assert prediction.status in ("starting", "processing")
    assert prediction.urls["get"].endswith(f"/v1/predictions/{prediction.id}")
    again = client.predictions.get(prediction.id)
    assert again.id == prediction.id
    client.predictions.cancel(prediction.id)
    prediction.wait()
    assert prediction.status == "canceled"
    assert len(prediction.output) < 40

    done = client.predictions.create(version="hearth/echo:any", input={"text": "x"})
    done.wait()
    assert (done.status, done.output) == ("succeeded", ["x "])
    assert done.metrics["predict_time"] > 0


def test_bad_input_and_unknown_models_are_errors(client):
    with pytest.raises(replicate.exceptions.ReplicateError) as bad:
        client.run("hearth/echo", input={"text": "x", "repeat": 0})
    assert bad.value.status == 422
    with pytest.raises(replicate.exceptions.ReplicateError) as unknown:
        client.run("hearth/nope", input={})
    assert unknown.value.status == 404
