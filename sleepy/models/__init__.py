"""Model backends behind one interface (see base.py): litellm (served), hf (in process), tiny (offline),
llamacpp (a GGUF model on a llama.cpp server sleepy manages)."""

from sleepy.models.base import Backend, Generation, ModelLoadError, SamplingParams

__all__ = ["Backend", "Generation", "ModelLoadError", "SamplingParams", "make_backend"]


def make_backend(model, seed: int = 0) -> Backend:
    """The backend a `model` config names (model.backend: litellm | hf | tiny | llamacpp)."""
    if model.backend == "litellm":
        from sleepy.models.litellm_backend import LiteLLMBackend

        backend = LiteLLMBackend(model.name, model.provider, model.api_base, model.api_key, model.concurrency,
                                 model.timeout_s, model.retries, cache_dir=model.cache_dir, path=model.path)
        backend.check()
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

        return LlamaCppBackend(model.name, model.gguf, model.api_base, threads=model.threads,
                               threads_batch=model.threads_batch, n_ctx=model.n_ctx, concurrency=model.concurrency,
                               timeout_s=model.timeout_s, retries=model.retries, cache_dir=model.cache_dir,
                               path=model.path, dtype="bfloat16" if model.dtype == "auto" else model.dtype,
                               log_dir=hydra_log_dir(), api_key=model.api_key)
    raise ValueError(f"model.backend must be one of litellm, hf, tiny, llamacpp; got {model.backend!r}")
