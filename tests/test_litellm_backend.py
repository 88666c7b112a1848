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
    assert server.script.served("k") == (1 if fault == "hang" else 2)  # retried once; a timeout never


def test_retry_after_is_honoured():
    script = Script({"k": [Step(status=429, headers=(("Retry-After", "2"),)), Step(reply="fixed")]})
    with ScriptedLLMServer(script) as server:
        backend = LiteLLMBackend("scripted", "openai", server.url + "/v1", retries=2, backoff_s=0.01)
        start = time.perf_counter()
        (gen,) = backend.generate([ask("k")], SamplingParams())
        waited = time.perf_counter() - start
        gap = server.log[1]["time"] - server.log[0]["time"]
    assert gen.text == "fixed" and gap >= 2.0 and waited >= 2.0


# -- served models: defaults sized from the server, timeouts from max_tokens, abandoned requests cancelled -----------
@pytest.mark.parametrize("provider,suffix", [("openai", "/v1"), ("ollama", ""), ("vllm", "/v1")])
def test_a_timeout_closes_the_connection_and_is_not_retried(provider, suffix):
    with ScriptedLLMServer(Script({"k": [Step(hang_s=8)]})) as server:
        backend = LiteLLMBackend("scripted", provider, server.url + suffix, timeout_s=0.5, retries=3, backoff_s=0.01)
        start = time.perf_counter()
        (gen,) = backend.generate([ask("k")], SamplingParams())
        elapsed = time.perf_counter() - start
        (request,) = server.log  # one request for one attempt: a timeout is not retried
    assert gen.text == "" and "Timeout" in gen.error and elapsed < 3
    assert request["closed_after_s"] is not None and request["closed_after_s"] < 2  # the server saw the client go


def test_a_streamed_reply_that_runs_past_its_deadline_is_abandoned_mid_stream():
    long = " ".join(f"w{i}" for i in range(400))  # 400 chunks, 20 ms apart: 8 s
    with ScriptedLLMServer(Script({"k": [Step(reply=long, token_s=0.02)]})) as server:
        backend = LiteLLMBackend("scripted", "openai", server.url + "/v1", timeout_s=1.0, retries=3, stream=True)
        (gen,) = backend.generate([ask("k")], SamplingParams())
        time.sleep(0.3)  # the server's next write fails
        (request,) = server.log
    assert "Timeout" in gen.error and request["body"]["stream"] is True
    assert request["closed_after_s"] is not None and request["closed_after_s"] < 2.5
    assert 10 < request["chunks"] < 200  # it stopped generating soon after the deadline, not after 400 chunks


def test_a_streamed_reply_is_whole_and_counts_tokens_from_the_usage_chunk():
    with ScriptedLLMServer(Script({"k": [Step(reply="fn main() { println!(1); }")]})) as server:
        backend = LiteLLMBackend("scripted", "openai", server.url + "/v1", stream=True)
        (gen,) = backend.generate([ask("k")], SamplingParams())
    assert gen.error is None and gen.text == "fn main() { println!(1); }"
    assert gen.tokens_out == 5 and gen.tokens_in == 2  # the scripted server's counts: words


def test_the_timeout_grows_with_max_tokens_unless_it_is_set():
    with ScriptedLLMServer(Script({"k": [Step(reply="ok", delay_s=1.0)]})) as server:
        backend = LiteLLMBackend("scripted", "openai", server.url + "/v1", retries=0, timeout_base_s=0.2,
                                 min_tokens_per_s=100)
        assert backend.timeout(30) == pytest.approx(0.5) and backend.timeout(300) == pytest.approx(3.2)
        (short,) = backend.generate([ask("k")], SamplingParams(max_tokens=30))
        (long,) = backend.generate([ask("k")], SamplingParams(max_tokens=300))
        fixed = LiteLLMBackend("scripted", "openai", server.url + "/v1", retries=0, timeout_s=0.5,
                               timeout_base_s=0.2, min_tokens_per_s=100)
        (capped,) = fixed.generate([ask("k")], SamplingParams(max_tokens=300))
    assert "Timeout" in short.error and long.text == "ok" and "Timeout" in capped.error
    line = LiteLLMBackend("m", "openai", "http://h/v1", concurrency=2).describe(1024)
    assert "316 s per request of up to 1024 tokens" in line  # 60 + 1024 / 4


def test_concurrency_follows_the_slots_a_llama_cpp_server_reports():
    with ScriptedLLMServer(Script({"k": [Step(reply="ok")]}), latency_s=0.4, slots=2) as server:
        backend = LiteLLMBackend("scripted", "openai", server.url + "/v1")
        start = time.perf_counter()
        backend.generate([ask(f"k{i}") for i in range(4)], SamplingParams())
        elapsed = time.perf_counter() - start
        times = sorted(r["time"] for r in server.log)
    assert backend.concurrency == 2 and "total_slots" in backend.sized_by
    assert times[1] - times[0] < 0.2 and times[2] - times[0] > 0.35  # two waves of two
    assert 0.75 < elapsed < 2.5


LLAMA_CPP_PYTHON = {"info": {"title": "llama.cpp Python API"}, "paths": {"/v1/chat/completions": {}, "/extras/tokenize": {}}}
TRANSFORMERS_SERVE = {"paths": {p: {} for p in ("/health", "/load_model", "/reset", "/v1/chat/completions", "/v1/models",
                                                "/v1/systemone")}}


@pytest.mark.parametrize("fields,openapi,provider,expected,why", [
    ({"owned_by": "me"}, None, "openai", 1, "llama-cpp-python"),  # llama-cpp-python's /v1/models
    ({}, LLAMA_CPP_PYTHON, "openai", 1, "llama-cpp-python"),  # its FastAPI schema
    ({"status": {"value": "loaded"}}, None, "openai", 1, "transformers serve"),  # a model it has loaded
    ({}, TRANSFORMERS_SERVE, "openai", 1, "transformers serve"),  # its schema, before any model is loaded
    ({}, None, "openai", 4, "does not say"),
    ({}, None, "vllm", 8, "vLLM"),
    ({}, None, "ollama", 1, "OLLAMA_NUM_PARALLEL"),
])
def test_concurrency_falls_back_to_what_the_server_is_known_to_do(fields, openapi, provider, expected, why):
    with ScriptedLLMServer(Script(), model_fields=fields, openapi=openapi) as server:
        backend = LiteLLMBackend("scripted", provider, server.url + ("" if provider == "ollama" else "/v1"))
        backend.size()
    assert backend.concurrency == expected and why in backend.sized_by
    line = backend.describe(1024)
    assert f"{expected} request" in line and why in line


def test_a_set_concurrency_is_kept_and_says_so():
    with ScriptedLLMServer(Script(), slots=4) as server:
        backend = LiteLLMBackend("scripted", "openai", server.url + "/v1", concurrency=3)
        backend.size()
    assert backend.concurrency == 3 and "(model.concurrency)" in backend.describe(64)
