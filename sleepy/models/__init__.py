"""Model backends behind one interface (see base.py): litellm (served), hf (in process), tiny (offline),
llamacpp (a GGUF model on a llama.cpp server sleepy manages)."""

from sleepy.models.base import Backend, Generation, ModelLoadError, SamplingParams

__all__ = ["Backend", "Generation", "ModelLoadError", "SamplingParams", "make_backend"]


def make_backend(model, seed: int = 0, max_tokens: int | None = None) -> Backend:
    """The backend a `model` config names (model.backend: litellm | hf | tiny | llamacpp). A served one says how
    many requests it sends at once and their timeout (for replies of up to `max_tokens`)."""
    if model.backend == "litellm":
        from sleepy.models.litellm_backend import LiteLLMBackend

        backend = LiteLLMBackend(model.name, model.provider, model.api_base, model.api_key, model.concurrency,
                                 model.timeout_s, model.retries, cache_dir=model.cache_dir, path=model.path,
                                 timeout_base_s=model.timeout_base_s, min_tokens_per_s=model.min_tokens_per_s,
                                 stream=model.stream)
        backend.check()
        backend.size()
        _describe(backend, max_tokens)
        return backend
    if model.backend == "hf":
        from sleepy.models.hf import HFBackend

        return HFBackend(model.path or model.name, name=model.name, device=model.device, dtype=model.dtype,
                         batch_size=model.batch_size, seed=seed)
    if model.backend == "tiny":
        from sleepy.models.tiny import tiny_backend

        return tiny_backend(seed=seed, batch_size=model.batch_size)
    if model.backend == "llamacpp":
        from sleepy.models.llamacpp import LlamaCppBackend, hydra_log_dir

        backend = LlamaCppBackend(model.name, model.gguf, model.api_base, threads=model.threads,
                                  threads_batch=model.threads_batch, n_ctx=model.n_ctx, concurrency=model.concurrency,
                                  timeout_s=model.timeout_s, timeout_base_s=model.timeout_base_s,
                                  min_tokens_per_s=model.min_tokens_per_s, stream=model.stream,
                                  retries=model.retries, cache_dir=model.cache_dir, path=model.path,
                                  dtype="bfloat16" if model.dtype == "auto" else model.dtype, log_dir=hydra_log_dir(),
                                  api_key=model.api_key)
        _describe(backend, max_tokens)
        return backend
    raise ValueError(f"model.backend must be one of litellm, hf, tiny, llamacpp; got {model.backend!r}")


def _describe(backend, max_tokens: int | None) -> None:
    from sleepy.console import say
    from sleepy.models.base import SamplingParams

    say(backend.describe(max_tokens or SamplingParams.max_tokens))
