"""The official `anthropic` Python client, unchanged, against Hearth's `/v1/messages`, for the
local model and for an upstream model behind a fake provider."""

import anthropic
import pytest

from conftest import UPSTREAM_KEY
from fake_provider import COMPLETION_TOKENS, PROMPT_TOKENS, TEXTS


@pytest.fixture()
def client(hearth_url):
    return anthropic.Anthropic(base_url=hearth_url, api_key="unused", max_retries=0)


def test_local_message(client):
    msg = client.messages.create(model="tiny-llama", max_tokens=8,
                                 messages=[{"role": "user", "content": "Hello"}])
    assert msg.role == "assistant" and msg.type == "message"
    assert msg.stop_reason in ("end_turn", "max_tokens")
    assert 1 <= msg.usage.output_tokens <= 8
    assert msg.content[0].type == "text"


def test_local_stream_matches_whole(client):
    # No sampling options: this client version has none, and local models then decode greedily.
    kwargs = dict(model="tiny-llama", max_tokens=12,
                  system="You are terse.", messages=[{"role": "user", "content": "Stream please"}])
    whole = client.messages.create(**kwargs)
    with client.messages.stream(**kwargs) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == whole.content[0].text
    assert final.stop_reason == whole.stop_reason
    assert final.usage.output_tokens == whole.usage.output_tokens


def test_upstream_message_whole_and_streamed(client):
    raw = client.messages.with_raw_response.create(
        model="upstream-claude", max_tokens=16, messages=[{"role": "user", "content": "Hi"}])
    assert raw.headers["x-hearth-route"] == "up-anthropic/claude-fake"
    assert raw.headers["x-hearth-run-id"].startswith("run_")
    msg = raw.parse()
    assert msg.content[0].text == "".join(TEXTS)
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    with client.messages.stream(model="upstream-claude", max_tokens=16,
                                messages=[{"role": "user", "content": "Hi"}]) as stream:
        assert "".join(stream.text_stream) == "".join(TEXTS)


def test_an_openai_wire_upstream_answers_in_anthropic_format(client):
    msg = client.messages.create(model="upstream-gpt", max_tokens=16,
                                 messages=[{"role": "user", "content": "Hi"}])
    assert msg.content[0].text == "".join(TEXTS)
    assert msg.stop_reason == "end_turn"


def test_errors_surface_as_client_exceptions(client):
    with pytest.raises(anthropic.NotFoundError) as info:
        client.messages.create(model="missing", max_tokens=4, messages=[{"role": "user", "content": "x"}])
    assert UPSTREAM_KEY not in str(info.value)
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model="tiny-llama", max_tokens=0, messages=[{"role": "user", "content": "x"}])
    assert "max_tokens" in str(info.value)


def test_local_tool_use_whole_and_streamed(client):
    """A forced tool call on the local model: a `tool_use` block whose input follows the schema,
    streamed as `input_json_delta`s that the client reassembles into the same input."""
    kwargs = dict(
        model="tiny-llama", max_tokens=120,
        messages=[{"role": "user", "content": "Weather in Oslo?"}],
        tools=[{"name": "get_weather", "description": "Weather in a city", "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 12},
                           "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"], "additionalProperties": False}}],
        tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
    )
    whole = client.messages.create(**kwargs)
    assert whole.stop_reason == "tool_use"
    [use] = [b for b in whole.content if b.type == "tool_use"]
    assert use.name == "get_weather" and set(use.input) == {"city", "unit"}
    assert use.input["unit"] in ("celsius", "fahrenheit")
    with client.messages.stream(**kwargs) as stream:
        final = stream.get_final_message()
    [streamed] = [b for b in final.content if b.type == "tool_use"]
    assert streamed.input == use.input
    assert final.stop_reason == "tool_use"
