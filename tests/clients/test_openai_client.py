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


WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city", "parameters": WEATHER_PARAMETERS}}


def check_weather_arguments(arguments):
    import json

    args = json.loads(arguments)
    assert set(args) == {"city", "unit"}, args
    assert len(args["city"]) <= 12 and args["unit"] in ("celsius", "fahrenheit"), args


def test_tool_calls_whole_streamed_and_answered(client):
    """A required call comes back well-formed, streamed the same as whole, and its result can be
    sent back for the next turn."""
    kwargs = dict(model="tiny-llama", messages=[{"role": "user", "content": "Weather in Oslo?"}],
                  tools=[WEATHER_TOOL], tool_choice="required", parallel_tool_calls=False,
                  max_tokens=120, temperature=1, seed=3)
    whole = client.chat.completions.create(**kwargs)
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    check_weather_arguments(call.function.arguments)

    with client.chat.completions.stream(**kwargs) as stream:
        final = stream.get_final_completion()
    [streamed] = final.choices[0].message.tool_calls
    assert (streamed.function.name, streamed.function.arguments) == ("get_weather", call.function.arguments)
    assert final.choices[0].finish_reason == "tool_calls"

    history = [{"role": "user", "content": "Weather in Oslo?"},
               choice.message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": "4 degrees, snow"}]
    follow = client.chat.completions.create(model="tiny-llama", messages=history, tools=[WEATHER_TOOL],
                                            tool_choice="none", max_tokens=6)
    assert follow.choices[0].finish_reason in ("stop", "length")
    assert follow.choices[0].message.tool_calls is None


def test_named_tool_parses_into_a_pydantic_model(client):
    """`parse` with a pydantic function tool: the call's arguments come back parsed."""
    from typing import Literal

    from pydantic import BaseModel, Field

    class GetWeather(BaseModel):
        city: str = Field(max_length=12)
        unit: Literal["celsius", "fahrenheit"]

    completion = client.chat.completions.parse(
        model="tiny-llama", messages=[{"role": "user", "content": "Weather in Rome?"}],
        tools=[openai.pydantic_function_tool(GetWeather)],
        tool_choice={"type": "function", "function": {"name": "GetWeather"}},
        max_tokens=120, temperature=1, seed=1,
    )
    [call] = completion.choices[0].message.tool_calls
    assert isinstance(call.function.parsed_arguments, GetWeather)
