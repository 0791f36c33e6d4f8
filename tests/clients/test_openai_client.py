"""The official `openai` Python client, unchanged, against Hearth's OpenAI-compatible surface."""

import openai
import pytest


@pytest.fixture()
def client(hearth_url):
    return openai.OpenAI(base_url=f"{hearth_url}/v1", api_key="unused", max_retries=0)


def test_models_list(client):
    ids = [m.id for m in client.models.list()]
    assert "tiny-llama" in ids


def test_chat_completion(client):
    resp = client.chat.completions.create(
        model="tiny-llama", messages=[{"role": "user", "content": "Hello"}], max_tokens=8, temperature=0,
    )
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].finish_reason in ("stop", "length")
    assert resp.usage.completion_tokens >= 1
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_streamed_chat_matches_non_streamed(client):
    kwargs = dict(model="tiny-llama", messages=[{"role": "user", "content": "Stream please"}],
                  max_tokens=16, temperature=0)
    whole = client.chat.completions.create(**kwargs)
    stream = client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs)
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert text == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens


def test_completions_stream(client):
    stream = client.completions.create(model="tiny-llama", prompt="Once", max_tokens=6, temperature=0, stream=True)
    pieces = [c.choices[0].text for c in stream if c.choices]
    whole = client.completions.create(model="tiny-llama", prompt="Once", max_tokens=6, temperature=0)
    assert "".join(pieces) == whole.choices[0].text


def test_errors_surface_as_client_exceptions(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="missing", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "x"}], temperature=-3)
    assert "temperature" in str(info.value)


def test_upstream_model_through_the_gateway(client):
    raw = client.chat.completions.with_raw_response.create(
        model="upstream-gpt", messages=[{"role": "user", "content": "Hi"}])
    assert raw.headers["x-hearth-route"] == "up-openai/gpt-fake"
    resp = raw.parse()
    assert resp.choices[0].message.content == "Hello from upstream"
    assert resp.usage.prompt_tokens == 11 and resp.usage.completion_tokens == 7
    stream = client.chat.completions.create(model="upstream-claude", stream=True,
                                            messages=[{"role": "user", "content": "Hi"}])
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "Hello from upstream"


def test_models_list_upstream_models(client):
    models = {m.id: m for m in client.models.list()}
    assert {"tiny-llama", "upstream-gpt", "upstream-claude"} <= set(models)
    assert models["upstream-gpt"].model_extra["kind"] == "upstream"
    assert models["tiny-llama"].model_extra["providers"] == ["local"]


def test_structured_output_parses_into_a_pydantic_model(client):
    """`parse` sends the model's JSON Schema as a strict `response_format`; a local model's
    answer always validates, whatever its weights (here random) would have said."""
    from pydantic import BaseModel, Field

    class Forecast(BaseModel):
        city: str = Field(max_length=12)
        days: int = Field(ge=1, le=7)
        sunny: bool

    for seed in range(3):
        completion = client.chat.completions.parse(
            model="tiny-llama", messages=[{"role": "user", "content": "Forecast, please"}],
            response_format=Forecast, max_tokens=200, temperature=1, seed=seed,
        )
        message = completion.choices[0].message
        assert isinstance(message.parsed, Forecast), message.content
        assert 1 <= message.parsed.days <= 7
