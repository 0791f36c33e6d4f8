"""Conformance: the same predictors (tests/fixtures/python) served by Cog's own server
(coglet, `cog==0.23.1` from PyPI) and by Hearth, the same request corpus (corpus.py), and the
answers reduced to status codes, JSON shapes and event vocabularies must be identical — except
for the differences listed in KNOWN, each with its reason, which must still be exactly as
recorded (so a change on either side is noticed).

One rule is wider than identity: a prediction object of Hearth's may carry keys coglet's lacks
(`input`, `error`, `created_at`, `started_at`, `completed_at`: the `PredictionResponse` of Cog's
own OpenAPI document lists them, Cog's earlier server and Replicate's API send them, and clients
read them), as long as it has every key of coglet's with the same shape."""

import difflib
import json
import os
import tempfile
import urllib.request
from pathlib import Path

import pytest

import corpus
import servers

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "python"
# The OpenAPI documents `cog build` writes for the fixtures (its Go CLI is not on PyPI, so they
# were worked out from its generator, pkg/schema/openapi_spec.go; see expected/README.md).
EXPECTED = Path(__file__).resolve().parent / "expected"

# (fixture, case) -> (coglet's answer, Hearth's answer, why they differ).
KNOWN = {
    ("echo", "cancel"): (
        (202, 200, {}, "succeeded"),
        (202, 200, {}, "canceled"),
        "coglet 0.23.1 answers the cancel but lets a sync generator predictor run to the end; "
        "Hearth raises CancelationException in it, as Cog documents",
    ),
    ("image", "local_path"): (
        (200, "failed"),
        (422, None),
        "a Path input naming a file on the server's disk: coglet hands it to the predictor, "
        "Hearth refuses it (a caller must not make a predictor read the daemon's files)",
    ),
    ("async", "fifth"): (
        (409, {"error": "str", "status": "str"}),
        (429, {"error": "str", "status": "str"}),
        "every slot busy: Hearth answers 429 with Retry-After on every surface; coglet 409",
    ),
}


def conforms(theirs, ours):
    """Equal, except that an object of ours may have keys theirs has not."""
    if isinstance(theirs, dict) and isinstance(ours, dict):
        return all(k in ours and conforms(v, ours[k]) for k, v in theirs.items())
    if isinstance(theirs, (list, tuple)) and isinstance(ours, (list, tuple)):
        return len(theirs) == len(ours) and all(conforms(a, b) for a, b in zip(theirs, ours))
    return theirs == ours


def test_conforms_is_strict_where_it_must_be():
    assert conforms({"id": "str"}, {"id": "str", "input": {}})
    assert not conforms({"id": "str", "output": "int"}, {"id": "str"})
    assert not conforms((200, "READY"), (200, "BUSY"))
    assert not conforms([1, 2], [1])


@pytest.mark.parametrize("fixture", sorted(p.stem.removeprefix("openapi-")
                                            for p in EXPECTED.glob("openapi-*.json")))
def test_openapi_is_the_document_cog_build_writes(fixture):
    """Byte for byte after sorting keys, so `1` and `1.0` differ as they do to a JSON reader."""
    work = tempfile.mkdtemp(prefix="openapi-")
    hearth = servers.start_hearth(hearth_bin(), FIXTURES / fixture, work,
                                  ROOT / "target" / "test-cache")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{hearth.port}/openapi.json") as response:
            ours = json.load(response)
    finally:
        hearth.stop()
    theirs = json.loads((EXPECTED / f"openapi-{fixture}.json").read_text())
    canonical = lambda doc: json.dumps(doc, sort_keys=True, indent=1).splitlines()
    diff = "\n".join(difflib.unified_diff(canonical(theirs), canonical(ours), "cog build", "hearth",
                                          lineterm=""))
    assert not diff, diff


def hearth_bin():
    return os.environ.get("HEARTH_BIN", str(ROOT / "target" / "debug" / "hearth"))


@pytest.fixture(scope="module")
def hooks():
    return corpus.Webhooks()


@pytest.mark.parametrize("fixture,run", [
    ("echo", corpus.echo_corpus),
    ("async", corpus.async_corpus),
    ("setup-fails", corpus.setup_fails_corpus),
    ("image", corpus.image_corpus),
])
def test_hearth_answers_as_coglet_does(fixture, run, hooks):
    work = tempfile.mkdtemp(prefix="conformance-")
    package = FIXTURES / fixture
    hearth = servers.start_hearth(hearth_bin(), package, work, ROOT / "target" / "test-cache")
    # coglet serves the document `cog build` writes into the image (see EXPECTED).
    expected = EXPECTED / f"openapi-{fixture}.json"
    openapi = json.loads(expected.read_text()) if expected.exists() else None
    coglet = servers.start_coglet(package, work, openapi)
    try:
        theirs = run(coglet.port, hooks)
        ours = run(hearth.port, hooks)
    finally:
        hearth.stop()
        coglet.stop()
    assert theirs.keys() == ours.keys()
    for case in theirs:
        known = KNOWN.get((fixture, case))
        if known:
            assert (theirs[case], ours[case]) == known[:2], f"{case} changed: {known[2]}"
        else:
            assert conforms(theirs[case], ours[case]), \
                f"{fixture}/{case}: coglet {theirs[case]!r}, hearth {ours[case]!r}"
