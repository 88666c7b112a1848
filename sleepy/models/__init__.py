"""Model backends behind one interface (see base.py): litellm (served), hf (in process), tiny (offline)."""

from sleepy.models.base import Backend, Generation, ModelLoadError, SamplingParams

__all__ = ["Backend", "Generation", "ModelLoadError", "SamplingParams", "make_backend"]


def make_backend(model, seed: int = 0) -> Backend:
    """The backend a `model` config names (model.backend: litellm | hf | tiny)."""
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
    raise ValueError(f"model.backend must be one of litellm, hf, tiny; got {model.backend!r}")
