"""Served models through litellm: OpenAI-compatible servers, Ollama, vLLM.

Async with bounded concurrency; a per-call timeout; retries with exponential backoff (or after the server's
Retry-After) on timeouts, 429, 5xx, dropped connections and garbage; a failure that persists becomes
Generation.error, never an exception (the agent stops a stage when too many calls fail). An optional disk cache
replays identical requests for reproducible runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import asdict
from pathlib import Path

from sleepy.models.base import Generation, Messages, ModelLoadError, SamplingParams

PROVIDERS = {"openai": "openai", "ollama": "ollama_chat", "vllm": "hosted_vllm"}
PERMANENT = ("AuthenticationError", "BadRequestError", "NotFoundError", "PermissionDeniedError",
             "UnprocessableEntityError", "ContextWindowExceededError")


class LiteLLMBackend:
    """generate() over a served model; `provider` is openai, ollama or vllm."""

    extra_body: dict | None = None  # server-specific request fields (a subclass's decoding defaults)

    def __init__(self, name: str, provider: str, api_base: str | None = None, api_key: str | None = None,
                 concurrency: int = 8, timeout_s: float = 120.0, retries: int = 3, backoff_s: float = 0.5,
                 cache_dir: str | None = None, path: str | None = None):
        if provider not in PROVIDERS:
            raise ValueError(f"model.provider must be one of {', '.join(PROVIDERS)}; got {provider!r}")
        self.name, self.provider, self.api_base, self.api_key = name, provider, api_base, api_key
        self.concurrency, self.timeout_s, self.retries, self.backoff_s = concurrency, timeout_s, retries, backoff_s
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.path = path  # local base weights, for a night's trainer (the server holds its own copy)
        self.adapters: list[str] = []

    @property
    def serves_adapters(self) -> bool:
        return self.provider == "vllm"

    def load_adapter(self, name: str, path: str) -> None:
        """Load a peft LoRA directory into the vLLM server at runtime (POST /v1/load_lora_adapter); it is then
        addressed as the model `name`. The path must be readable by the server."""
        if not self.serves_adapters:
            raise ValueError(f"the {self.provider} backend serves no LoRA adapters")
        url = self.api_base.rstrip("/") + "/load_lora_adapter"
        req = urllib.request.Request(url, json.dumps({"lora_name": name, "lora_path": str(path)}).encode(),
                                     {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=min(60.0, self.timeout_s)):
                pass
        except (OSError, ValueError) as e:
            detail = e.read().decode(errors="replace")[:300] if isinstance(e, urllib.error.HTTPError) else e
            raise ModelLoadError(f"vLLM at {self.api_base} did not load LoRA adapter '{name}' from {path}: {detail} "
                                 "(start vLLM with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)") from None
        if name not in self.adapters:
            self.adapters.append(name)

    def check(self) -> None:
        """Fail fast, with one clear message, when the server cannot be reached."""
        if not self.api_base:
            return
        base = self.api_base.rstrip("/")
        url = base + ("/api/tags" if self.provider == "ollama" else "/models")
        try:
            with urllib.request.urlopen(url, timeout=min(10.0, self.timeout_s)):
                return
        except urllib.error.HTTPError:
            return  # it answered: reachable, whatever it thinks of that route
        except (OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise ModelLoadError(f"cannot reach the {self.provider} server for model '{self.name}' at {base} "
                                 f"(model.api_base): {reason}. Start it, fix model.api_base, or use model=tiny "
                                 "for an offline run") from None

    def generate(self, prompts: list[Messages], params: SamplingParams | list[SamplingParams],
                 adapter: str | None = None) -> list[Generation]:
        if isinstance(params, SamplingParams):
            params = [params] * len(prompts)
        if adapter is not None and not self.serves_adapters:
            raise ValueError(f"the {self.provider} backend serves no LoRA adapters (asked for '{adapter}')")
        return asyncio.run(self._generate_all(prompts, params, adapter))

    def close(self) -> None:
        pass

    async def _generate_all(self, prompts, params, adapter) -> list[Generation]:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        import logging

        import litellm

        litellm.suppress_debug_info = True
        for logger in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "httpx"):
            logging.getLogger(logger).setLevel(logging.WARNING)
        gate = asyncio.Semaphore(self.concurrency)

        async def one(messages: Messages, params: SamplingParams) -> Generation:
            async with gate:
                return await self._generate_one(litellm, messages, params, adapter)

        with warnings.catch_warnings():  # pydantic's complaints about a malformed reply: the reply is an error
            warnings.filterwarnings("ignore", message="Pydantic serializer warnings")
            return list(await asyncio.gather(*(one(m, p) for m, p in zip(prompts, params, strict=True))))

    async def _generate_one(self, litellm, messages, params, adapter) -> Generation:
        key = self._cache_key(messages, params, adapter)
        if (hit := self._cache_get(key)) is not None:
            return hit
        model = f"{PROVIDERS[self.provider]}/{adapter or self.name}"
        error = ""
        for attempt in range(self.retries + 1):
            start = time.perf_counter()
            try:
                r = await litellm.acompletion(
                    model=model, messages=messages, api_base=self.api_base, api_key=self.api_key or "none",
                    temperature=params.temperature, max_tokens=params.max_tokens, top_p=params.top_p,
                    seed=params.seed, timeout=self.timeout_s, num_retries=0,
                    **({"extra_body": self.extra_body} if self.extra_body else {}))
                text = r.choices[0].message.content
                if not isinstance(text, str):
                    raise ValueError("reply holds no text")
                usage = getattr(r, "usage", None)
                gen = Generation(text=text, tokens_in=int(getattr(usage, "prompt_tokens", 0) or 0),
                                 tokens_out=int(getattr(usage, "completion_tokens", 0) or 0),
                                 latency_ms=(time.perf_counter() - start) * 1000)
                self._cache_put(key, gen)
                return gen
            except Exception as e:  # noqa: BLE001 - any failure of a served model is an attempt's outcome
                error = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
                if type(e).__name__ in PERMANENT:
                    break
                if attempt < self.retries:
                    await asyncio.sleep(max(self.backoff_s * 2**attempt, retry_after(e)))
        return Generation(text="", error=error)

    def _cache_key(self, messages, params, adapter) -> str | None:
        if self.cache_dir is None:
            return None
        blob = json.dumps([self.provider, self.name, adapter, messages, asdict(params)], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _cache_get(self, key: str | None) -> Generation | None:
        if key is None:
            return None
        try:
            return Generation(**json.loads((self.cache_dir / f"{key}.json").read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def _cache_put(self, key: str | None, gen: Generation) -> None:
        if key is None:
            return
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_dir / f"{key}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(asdict(gen)))
        os.replace(tmp, self.cache_dir / f"{key}.json")


RETRY_AFTER_CAP_S = 300.0


def retry_after(error: BaseException) -> float:
    """The seconds a server asked for in its Retry-After (or retry-after-ms) header, at most RETRY_AFTER_CAP_S;
    0 when it asked for nothing."""
    import email.utils

    response = getattr(error, "response", None)
    headers = getattr(error, "litellm_response_headers", None) or getattr(response, "headers", None) or {}
    try:
        if (ms := headers.get("retry-after-ms")) is not None:
            return min(RETRY_AFTER_CAP_S, max(0.0, float(ms) / 1000))
        if (value := headers.get("retry-after")) is None:
            return 0.0
        try:
            seconds = float(value)
        except ValueError:  # an HTTP date
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
    except (TypeError, ValueError, AttributeError):
        return 0.0
    return min(RETRY_AFTER_CAP_S, max(0.0, seconds))
