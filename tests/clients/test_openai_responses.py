"""The official `openai` client's Responses API (`client.responses`), unchanged, against Hearth."""

import json
from typing import Literal

import openai
import pytest
from pydantic import BaseModel, Field


@pytest.fixture()
def client(hearth_url):
    return openai.OpenAI(base_url=f"{hearth_url}/v1", api_key="unused", max_retries=0)


class Forecast(BaseModel):
    city: str = Field(max_length=12)
    days: int = Field(ge=1, le=7)
    sunny: bool


WEATHER_TOOL = {
    "type": "function", "name": "get_weather", "description": "Weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"], "additionalProperties": False,
    },
}


def test_create_then_retrieve(client):
    response = client.responses.create(model="tiny-llama", instructions="Be brief.", input="Hello",
                                       max_output_tokens=8, temperature=0, metadata={"team": "docs"})
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.status in ("completed", "incomplete")
    assert response.output_text
    assert response.usage.output_tokens >= 1
    assert response.metadata == {"team": "docs"}
    again = client.responses.retrieve(response.id)
    assert again.output_text == response.output_text and again.status == response.status


def test_stream_matches_the_whole_answer(client):
    kwargs = dict(model="tiny-llama", input="Stream please", max_output_tokens=12, temperature=0)
    whole = client.responses.create(**kwargs)
    deltas, numbers, final = [], [], None
    with client.responses.stream(**kwargs) as stream:
        for event in stream:
            numbers.append(event.sequence_number)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
            if event.type in ("response.completed", "response.incomplete"):
                final = event.response
    assert numbers == list(range(len(numbers)))
    assert final.status == whole.status
    assert "".join(deltas) == whole.output_text == final.output_text


def test_structured_output_parses_into_a_pydantic_model(client):
    """`text_format` sends a strict JSON Schema; the local model's answer always validates,
    whatever its random weights would have said."""
    parsed = client.responses.parse(model="tiny-llama", input="Forecast, please", text_format=Forecast,
                                    max_output_tokens=200, temperature=1)
    assert isinstance(parsed.output_parsed, Forecast), parsed.output_text
    with client.responses.stream(model="tiny-llama", input="Forecast, please", text_format=Forecast,
                                 max_output_tokens=200, temperature=1) as stream:
        final = stream.get_final_response()
    assert isinstance(final.output_parsed, Forecast), final.output_text


def test_tool_call_and_its_result_in_the_next_response(client):
    first = client.responses.create(model="tiny-llama", input="Weather in Oslo?", tools=[WEATHER_TOOL],
                                    tool_choice="required", parallel_tool_calls=False,
                                    max_output_tokens=250, temperature=0)
    [call] = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and call.status == "completed"
    args = json.loads(call.arguments)
    assert set(args) == {"city", "unit"} and args["unit"] in ("celsius", "fahrenheit"), args

    follow = client.responses.create(
        model="tiny-llama", previous_response_id=first.id, tools=[WEATHER_TOOL], tool_choice="none",
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "4 degrees, snow"}],
        max_output_tokens=6, temperature=0)
    assert follow.previous_response_id == first.id
    assert not [item for item in follow.output if item.type == "function_call"]
    alone = client.responses.create(model="tiny-llama", input="Weather in Oslo?", tools=[WEATHER_TOOL],
                                    tool_choice="none", max_output_tokens=1)
    assert follow.usage.input_tokens > alone.usage.input_tokens, "the call and its result were sent"


def test_background_response_resumed_with_starting_after(client):
    """The caller leaves a background stream after a few events and picks it up again with
    `starting_after`: the rest arrives numbered where it left off, and the response completes."""
    stream = client.responses.create(model="tiny-llama", input="Tell me a story", background=True,
                                     stream=True, max_output_tokens=24, temperature=0)
    seen = []
    for event in stream:
        seen.append(event)
        if len(seen) == 4:
            break
    stream.close()
    response_id = seen[0].response.id
    last = seen[-1].sequence_number

    rest = list(client.responses.retrieve(response_id, stream=True, starting_after=last))
    assert [e.sequence_number for e in rest] == list(range(last + 1, last + 1 + len(rest)))
    assert rest[-1].type in ("response.completed", "response.incomplete")
    text = "".join(e.delta for e in seen + rest if e.type == "response.output_text.delta")
    final = client.responses.retrieve(response_id)
    assert final.background is True
    assert text == final.output_text and final.status == rest[-1].response.status


def test_errors_surface_as_client_exceptions(client):
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_missing")
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="tiny-llama", input="x", previous_response_id="resp_missing")
    assert info.value.param == "previous_response_id"
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="tiny-llama", input="x", tools=[{"type": "web_search"}])


def test_named_tool_choice_and_literal_arguments(client):
    class GetWeather(BaseModel):
        city: str = Field(max_length=12)
        unit: Literal["celsius", "fahrenheit"]

    response = client.responses.parse(
        model="tiny-llama", input="Weather in Rome?", tools=[openai.pydantic_responses_function_tool(GetWeather)],
        tool_choice={"type": "function", "name": "GetWeather"}, max_output_tokens=250, temperature=0)
    [call] = [item for item in response.output if item.type == "function_call"]
    assert isinstance(call.parsed_arguments, GetWeather)
