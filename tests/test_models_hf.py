"""The in-process transformers backend on the offline tiny model: build, cache, generate, LoRA adapters, load errors."""

import hashlib
import os
import subprocess
import sys
import time

import pytest

from sleepy.models.base import ModelLoadError, SamplingParams
from sleepy.models.hf import HFBackend
from sleepy.models.tiny import build_tiny, tiny_backend

GREEDY = SamplingParams(temperature=0, max_tokens=16)
PROMPTS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": "You are a Rust expert."},
     {"role": "user", "content": "Fix it:\n```rust\nfn main() { let x = 5; x = 6; }\n```"}],
    [{"role": "user", "content": "error[E0382]: borrow of moved value: `v`"}],
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny")


def weights_hash(path):
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


def texts(gens):
    return [g.text for g in gens]


def test_package_imports_without_torch():
    code = "import sys, sleepy.models.hf, sleepy.models.tiny; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tiny_builds_once_deterministically_and_tokenizes_rust(cache, tmp_path, builtin):
    from tokenizers import Tokenizer
    from transformers import AutoConfig, AutoTokenizer

    path = build_tiny(cache)
    built = (path / "model.safetensors").stat().st_mtime_ns
    start = time.perf_counter()
    assert build_tiny(cache) == path and time.perf_counter() - start < 2
    assert (path / "model.safetensors").stat().st_mtime_ns == built  # reused, not rebuilt
    assert [p.name for p in cache.iterdir() if p.name.startswith(".")] == []  # no temp dirs left behind

    again = build_tiny(tmp_path / "other")
    assert again.name == path.name and weights_hash(again) == weights_hash(path)
    assert (again / "tokenizer.json").read_bytes() == (path / "tokenizer.json").read_bytes()
    assert weights_hash(build_tiny(tmp_path / "other", seed=1)) != weights_hash(path)

    config = AutoConfig.from_pretrained(path)
    assert config.model_type == "qwen2" and config.hidden_size == 64 and not config.tie_word_embeddings
    tok = AutoTokenizer.from_pretrained(path)  # for a qwen2 model: a Qwen2Tokenizer rebuilt from vocab and merges
    trained = Tokenizer.from_file(str(path / "tokenizer.json"))
    assert 2000 <= len(tok) <= 4000 and tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    for k in builtin.koans[:5]:
        ids = tok(k.solution, add_special_tokens=False)["input_ids"]
        assert ids == trained.encode(k.solution).ids  # loads as it was trained
        assert tok.decode(ids) == k.solution and len(ids) < len(k.solution) / 2  # trained merges compress Rust
    chat = tok.apply_chat_template(PROMPTS[0], add_generation_prompt=True, tokenize=False)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_concurrent_builds_agree(tmp_path):
    code = "import sys; from sleepy.models.tiny import build_tiny; print(build_tiny(sys.argv[1], seed=3))"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    paths = {p.communicate(timeout=120)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs) and len(paths) == 1
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(paths.pop())]


def test_generates_a_batch_greedily_and_reproducibly(cache):
    from transformers import AutoTokenizer

    backend = tiny_backend(cache_dir=cache)
    assert backend.name == "tiny"
    tok = AutoTokenizer.from_pretrained(build_tiny(cache))
    for batch_size in (8, 2):  # one batch of 3, then batches of 2 and 1: padding must not count
        backend.batch_size = batch_size
        gens = backend.generate(PROMPTS, GREEDY)
        assert len(gens) == 3
        for g, p in zip(gens, PROMPTS, strict=True):
            assert g.tokens_in == len(tok.apply_chat_template(p, add_generation_prompt=True, tokenize=True)["input_ids"])
            assert 0 < g.tokens_out <= GREEDY.max_tokens and g.latency_ms > 0 and g.error is None
        assert texts(backend.generate(PROMPTS, GREEDY)) == texts(gens)
    sampled = SamplingParams(temperature=1.0, max_tokens=16, seed=7)
    assert texts(backend.generate(PROMPTS, sampled)) == texts(backend.generate(PROMPTS, sampled))
    assert texts(backend.generate(PROMPTS, SamplingParams(temperature=1.0, max_tokens=16, seed=8))) \
        != texts(backend.generate(PROMPTS, sampled))
    backend.close()


def test_a_prompts_sample_depends_on_its_own_seed_not_on_the_batch_around_it(cache):
    """A koan's reply must not change with koans.count, batch order or a resume: each prompt's seed decides it."""
    backend = tiny_backend(cache_dir=cache)

    def sampled(seed):
        return SamplingParams(temperature=1.0, max_tokens=24, seed=seed)

    alone = backend.generate([PROMPTS[2]], [sampled(11)])[0].text
    crowd = backend.generate(PROMPTS, [sampled(5), sampled(7), sampled(11)])
    assert crowd[2].text == alone
    backend.batch_size = 1
    assert backend.generate([PROMPTS[1], PROMPTS[2]], [sampled(3), sampled(11)])[1].text == alone
    others = {backend.generate([PROMPTS[2]], [sampled(seed)])[0].text for seed in (12, 13, 14)}
    assert others - {alone}  # another seed, another sample
    backend.close()


def make_lora(model_dir, out, seed):
    """A real, non-trivial LoRA adapter on q_proj/v_proj of the model in model_dir."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(out)
    return out


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # peft calls it
def test_lora_adapters_change_output_and_base_is_untouched(cache, tmp_path):
    backend = tiny_backend(cache_dir=cache)
    base = texts(backend.generate(PROMPTS, GREEDY))
    with pytest.raises(ValueError, match="unknown adapter 'first'.*none"):
        backend.generate(PROMPTS, GREEDY, adapter="first")

    model_dir = build_tiny(cache)
    backend.load_adapter("first", make_lora(model_dir, tmp_path / "first", seed=1))
    first = texts(backend.generate(PROMPTS, GREEDY, adapter="first"))
    assert first != base
    assert texts(backend.generate(PROMPTS, GREEDY)) == base

    backend.load_adapter("second", make_lora(model_dir, tmp_path / "second", seed=2))
    second = texts(backend.generate(PROMPTS, GREEDY, adapter="second"))
    assert second not in (base, first) and backend.adapters == ["first", "second"]
    assert texts(backend.generate(PROMPTS, GREEDY, adapter="first")) == first
    assert texts(backend.generate(PROMPTS, GREEDY)) == base

    backend.load_adapter("first", tmp_path / "second")  # same name again: replaced
    assert texts(backend.generate(PROMPTS, GREEDY, adapter="first")) == second
    with pytest.raises(ValueError, match="unknown adapter 'third'") as err:
        backend.generate(PROMPTS, GREEDY, adapter="third")
    assert "first" in str(err.value) and "second" in str(err.value)
    backend.close()


@pytest.mark.parametrize("model", ["Qwen/Qwen2.5-Coder-1.5B-Instruct", "/nonexistent/weights"])
def test_missing_model_is_one_clear_error(model, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as err:
        HFBackend(model)
    message = str(err.value)
    assert f"'{model}'" in message and "model=tiny" in message and "model.path" in message
    assert "nothing can be downloaded" in message and "\n" not in message
    assert err.value.__cause__ is not None


def test_dequantizing_a_gguf_without_the_gguf_package_is_one_clear_error(tmp_path, monkeypatch):
    from sleepy.models import gguf_model

    monkeypatch.setenv("SLEEPY_CACHE_DIR", str(tmp_path))
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf fails, as without the llamacpp extra
    monkeypatch.setattr(gguf_model, "inspect_model", lambda path: None)
    monkeypatch.setattr(gguf_model, "file_sha256", lambda path: "0" * 64)
    with pytest.raises(ModelLoadError) as err:
        gguf_model.dequantized_dir(tmp_path / "model.gguf")
    assert "gguf package" in str(err.value) and "[llamacpp]" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "gguf" / "dequantized").exists()  # nothing half-made
