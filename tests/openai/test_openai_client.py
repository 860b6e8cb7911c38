"""The official `openai` client against a running `moeflow serve` (MOEFLOW_BASE_URL).

.ci/run starts the server, installs these requirements from PyPI and runs pytest here.
"""

import os

import openai
import pytest

BASE_URL = os.environ.get("MOEFLOW_BASE_URL", "http://127.0.0.1:18123/v1")


@pytest.fixture(scope="module")
def client():
    return openai.OpenAI(base_url=BASE_URL, api_key="unused", timeout=60, max_retries=0)


@pytest.fixture(scope="module")
def model(client):
    models = client.models.list().data
    assert len(models) == 1
    return models[0].id


def test_completion(client, model):
    r = client.completions.create(model=model, prompt="The capital of", max_tokens=8, temperature=0)
    assert r.object == "text_completion"
    choice = r.choices[0]
    assert choice.finish_reason in ("length", "stop")
    assert isinstance(choice.text, str) and choice.text
    assert r.usage.completion_tokens == 8 or choice.finish_reason == "stop"
    assert r.usage.prompt_tokens > 0
    # Greedy decoding is deterministic.
    again = client.completions.create(model=model, prompt="The capital of", max_tokens=8, temperature=0)
    assert again.choices[0].text == choice.text


def test_streaming_chat_completion(client, model):
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Say something."}],
        max_tokens=6,
        temperature=0.7,
        seed=7,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                pieces.append(c.delta.content)
            if c.finish_reason:
                finish = c.finish_reason
    assert finish in ("length", "stop")
    assert usage is not None and usage.completion_tokens >= 1
    assert "".join(pieces) or finish == "stop"


def test_bad_request_is_a_400_naming_the_field(client, model):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=model, prompt="x", max_tokens=0)
    assert "max_tokens" in str(e.value)


def test_chat_top_logprobs(client, model):
    r = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Count to three."}],
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    content = r.choices[0].logprobs.content
    assert content and len(content) == r.usage.completion_tokens
    for t in content:
        assert len(t.top_logprobs) == 3
        lps = [a.logprob for a in t.top_logprobs]
        assert lps == sorted(lps, reverse=True) and all(lp <= 0 for lp in lps)
        # Greedy: the chosen token is the likeliest one.
        assert t.top_logprobs[0].logprob == t.logprob
