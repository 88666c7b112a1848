"""The litellm backend against the scripted server: providers, retries, timeouts, the replay cache."""

import time

import pytest

from sleepy.models.base import ModelLoadError, SamplingParams
from sleepy.models.litellm_backend import LiteLLMBackend
from sleepy.testing.scripted_llm import Script, ScriptedLLMServer, Step


def ask(koan):
    return [{"role": "user", "content": f"fix {koan}"}]


@pytest.mark.parametrize("provider,suffix", [("openai", "/v1"), ("ollama", ""), ("vllm", "/v1")])
def test_each_provider_gets_its_reply(provider, suffix):
    with ScriptedLLMServer(Script({"k1": [Step(reply="one")], "k2": [Step(reply="two")]})) as server:
        backend = LiteLLMBackend("scripted", provider, server.url + suffix)
        backend.check()
        gens = backend.generate([ask("k1"), ask("k2")], SamplingParams(max_tokens=32))
    assert [g.text for g in gens] == ["one", "two"] and all(g.error is None for g in gens)
    assert gens[0].tokens_in > 0 and gens[0].latency_ms > 0


def test_5xx_is_retried_with_backoff_then_succeeds():
    with ScriptedLLMServer(Script({"k": [Step(status=500), Step(status=502), Step(reply="fixed")]})) as server:
        backend = LiteLLMBackend("scripted", "openai", server.url + "/v1", retries=3, backoff_s=0.05)
        (gen,) = backend.generate([ask("k")], SamplingParams())
        assert gen.text == "fixed" and server.script.served("k") == 3


def test_a_persistent_timeout_becomes_an_error_not_an_exception():
    with ScriptedLLMServer(Script({"k": [Step(hang_s=3)]})) as server:
        backend = LiteLLMBackend("scripted", "openai", server.url + "/v1", timeout_s=0.5, retries=1, backoff_s=0.05)
        start = time.perf_counter()
        (gen,) = backend.generate([ask("k")], SamplingParams())
    assert gen.text == "" and "Timeout" in gen.error
    assert time.perf_counter() - start < 5


def test_concurrency_is_bounded():
    with ScriptedLLMServer(Script({"k": [Step(reply="ok")]}), latency_s=0.3) as server:
        backend = LiteLLMBackend("scripted", "openai", server.url + "/v1", concurrency=2)
        start = time.perf_counter()
        backend.generate([ask(f"k{i}") for i in range(4)], SamplingParams())
        elapsed = time.perf_counter() - start
    assert 0.55 < elapsed < 2.0  # two waves of two


def test_disk_cache_replays_without_the_server(tmp_path):
    with ScriptedLLMServer(Script({"k": [Step(reply="first")]})) as server:
        LiteLLMBackend("scripted", "openai", server.url + "/v1", cache_dir=str(tmp_path)).generate(
            [ask("k")], SamplingParams(seed=7))
        url = server.url
    backend = LiteLLMBackend("scripted", "openai", url + "/v1", cache_dir=str(tmp_path), retries=0)
    (gen,) = backend.generate([ask("k")], SamplingParams(seed=7))
    assert gen.text == "first"
    (other,) = backend.generate([ask("k")], SamplingParams(seed=8))
    assert other.error is not None


def test_unreachable_server_fails_the_check_with_one_message():
    with ScriptedLLMServer(Script()) as server:
        url = server.url
    with pytest.raises(ModelLoadError, match=f"cannot reach the ollama server for model 'm' at {url}"):
        LiteLLMBackend("m", "ollama", url).check()


def test_adapters_are_refused_where_they_cannot_be_served():
    with pytest.raises(ValueError, match="serves no LoRA adapters"):
        LiteLLMBackend("m", "openai", "http://127.0.0.1:9/v1").generate([ask("k")], SamplingParams(), adapter="a1")


NULL_CONTENT = ('{"id": "x", "object": "chat.completion", "created": 0, "model": "scripted", "choices": [{"index": 0, '
                '"message": {"role": "assistant", "content": null}, "finish_reason": "stop"}]}')
FAULTS = {
    "garbage JSON": Step(malformed=True),
    "choices not a list": Step(body='{"choices": "nope"}'),
    "HTML": Step(body="<html><body><h1>502 Bad Gateway</h1></body></html>", content_type="text/html"),
    "HTTP 500": Step(status=500),
    "HTTP 429": Step(status=429),
    "dropped connection": Step(drop=True),
    "content null": Step(body=NULL_CONTENT),
    "hang": Step(hang_s=3),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_every_kind_of_broken_server_is_a_model_error_with_its_cause(fault):
    with ScriptedLLMServer(Script({"k": [FAULTS[fault]]})) as server:
        backend = LiteLLMBackend("scripted", "openai", server.url + "/v1", timeout_s=1, retries=1, backoff_s=0.01)
        (gen,) = backend.generate([ask("k")], SamplingParams())
    assert gen.text == "" and gen.error, fault
    assert server.script.served("k") == 2  # retried once


def test_retry_after_is_honoured():
    script = Script({"k": [Step(status=429, headers=(("Retry-After", "2"),)), Step(reply="fixed")]})
    with ScriptedLLMServer(script) as server:
        backend = LiteLLMBackend("scripted", "openai", server.url + "/v1", retries=2, backoff_s=0.01)
        start = time.perf_counter()
        (gen,) = backend.generate([ask("k")], SamplingParams())
        waited = time.perf_counter() - start
        gap = server.log[1]["time"] - server.log[0]["time"]
    assert gen.text == "fixed" and gap >= 2.0 and waited >= 2.0
