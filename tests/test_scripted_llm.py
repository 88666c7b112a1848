"""The scripted chat server speaks OpenAI and Ollama over HTTP, to plain clients and to litellm."""

import json
import time
import urllib.error
import urllib.request

import pytest

from sleepy.testing.scripted_llm import Script, ScriptedLLMServer, Step


def post(url, body, timeout=10):
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read()


def chat(koan):
    return [{"role": "system", "content": "Fix the Rust program."}, {"role": "user", "content": f"koan {koan}: code"}]


@pytest.fixture()
def server():
    script = Script({
        "bc_one": [Step(reply="wrong fix"), Step(status=503), Step(reply="```rust\nfn main() {}\n```")],
        "bc_slow": [Step(reply="late", delay_s=0.3)],
        "bc_garbage": [Step(malformed=True)],
        "bc_hang": [Step(hang_s=2.0)],
    })
    with ScriptedLLMServer(script) as s:
        yield s


def test_openai_protocol_serves_the_script_in_order(server):
    url = server.url + "/v1/chat/completions"
    status, body = post(url, {"model": "m", "messages": chat("bc_one")})
    reply = json.loads(body)
    assert status == 200 and reply["choices"][0]["message"]["content"] == "wrong fix"
    assert reply["usage"]["completion_tokens"] == 2
    with pytest.raises(urllib.error.HTTPError) as err:
        post(url, {"model": "m", "messages": chat("bc_one")})
    assert err.value.code == 503
    for _ in range(2):  # the last step repeats
        reply = json.loads(post(url, {"model": "m", "messages": chat("bc_one")})[1])
        assert "fn main" in reply["choices"][0]["message"]["content"]
    assert server.script.served("bc_one") == 4


def test_ollama_protocol_with_and_without_streaming(server):
    status, body = post(server.url + "/api/chat", {"model": "m", "messages": chat("bc_one"), "stream": False})
    assert status == 200 and json.loads(body)["message"]["content"] == "wrong fix" and json.loads(body)["done"]
    server.script.steps["bc_two"] = [Step(reply="streamed")]
    _, body = post(server.url + "/api/chat", {"model": "m", "messages": chat("bc_two"), "stream": True})
    lines = [json.loads(x) for x in body.decode().splitlines()]
    assert "".join(x["message"]["content"] for x in lines) == "streamed" and lines[-1]["done"]


def test_latency_malformed_and_hang(server):
    url = server.url + "/v1/chat/completions"
    start = time.perf_counter()
    post(url, {"model": "m", "messages": chat("bc_slow")})
    assert time.perf_counter() - start >= 0.3
    _, body = post(url, {"model": "m", "messages": chat("bc_garbage")})
    with pytest.raises(ValueError):
        json.loads(body)
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        post(url, {"model": "m", "messages": chat("bc_hang")}, timeout=0.5)


def test_litellm_talks_to_it_as_openai_and_as_ollama(server):
    import os

    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    import litellm

    server.script.steps["bc_lite"] = [Step(reply="from the script")]
    r = litellm.completion(model="openai/scripted", api_base=server.url + "/v1", api_key="none",
                           messages=chat("bc_lite"), timeout=10)
    assert r.choices[0].message.content == "from the script"
    r = litellm.completion(model="ollama_chat/scripted", api_base=server.url, messages=chat("bc_lite"), timeout=10)
    assert r.choices[0].message.content == "from the script"
    assert {e["path"] for e in server.log if e["key"] == "bc_lite"} == {"/v1/chat/completions", "/api/chat"}


def test_the_command_lines_answer_script_serves_each_builtin_koan_its_broken_code_then_its_solution():
    from sleepy.koans import load_pack
    from sleepy.prompt import extract_fix
    from sleepy.testing.scripted_llm import answer_script

    koan = load_pack().koans[0]
    broken, fixed = answer_script("second").steps[koan.title]
    assert extract_fix(broken.reply) == koan.code.strip() + "\n" and extract_fix(fixed.reply) == koan.solution.strip() + "\n"
