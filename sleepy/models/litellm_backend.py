"""Served models through litellm: OpenAI-compatible servers, Ollama, vLLM.

Async with bounded concurrency, sized from the server when model.concurrency is null (`server_slots`); a per-call
deadline that grows with max_tokens unless model.timeout_s is set; retries with exponential backoff (or after the
server's Retry-After) on 429, 5xx, dropped connections and garbage, never on a timeout (the same request would ask
the same slow server for the same work); a failure that persists becomes Generation.error, never an exception (the
agent stops a stage when too many calls fail). An optional disk cache replays identical requests for reproducible
runs.

An abandoned request is cancelled where the server allows it: at its deadline the client closes the connection
(the asyncio deadline cancels the request, and httpx drops a connection whose response it did not read). llama.cpp's
llama-server, vLLM and Ollama stop generating when the client disconnects; `transformers serve` notices only while
streaming, so `stream=True` (model.stream) asks for the reply in chunks (measured: the next request waited 12 s
behind an abandoned whole one, 0.15 s behind an abandoned streamed one). llama-cpp-python's server stops neither,
and gets stuck on an abandoned stream (see llamacpp.py).
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
TIMEOUTS = ("Timeout", "TimeoutError", "APITimeoutError", "ReadTimeout")  # never retried
# Requests in flight when the server does not say how many it serves at once (model.concurrency: null):
# vLLM batches continuously (its max_num_seqs is not exposed); Ollama serves OLLAMA_NUM_PARALLEL at once, 1 unless
# set, and does not expose it; any other OpenAI-compatible server is unknown.
FALLBACK_CONCURRENCY = {"vllm": 8, "ollama": 1, "openai": 4}


class LiteLLMBackend:
    """generate() over a served model; `provider` is openai, ollama or vllm."""

    extra_body: dict | None = None  # server-specific request fields (a subclass's decoding defaults)

    def __init__(self, name: str, provider: str, api_base: str | None = None, api_key: str | None = None,
                 concurrency: int | None = None, timeout_s: float | None = None, retries: int = 3,
                 backoff_s: float = 0.5, cache_dir: str | None = None, path: str | None = None,
                 timeout_base_s: float = 60.0, min_tokens_per_s: float = 4.0, stream: bool = False):
        if provider not in PROVIDERS:
            raise ValueError(f"model.provider must be one of {', '.join(PROVIDERS)}; got {provider!r}")
        self.name, self.provider, self.api_base, self.api_key = name, provider, api_base, api_key
        self.concurrency, self.timeout_s, self.retries, self.backoff_s = concurrency, timeout_s, retries, backoff_s
        self.timeout_base_s, self.min_tokens_per_s, self.stream = timeout_base_s, min_tokens_per_s, stream
        self.sized_by = "model.concurrency" if concurrency is not None else ""  # why this concurrency
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
            with urllib.request.urlopen(req, timeout=min(60.0, self.timeout_s or 60.0)):  # loading, not generating
                pass
        except (OSError, ValueError) as e:
            detail = e.read().decode(errors="replace")[:300] if isinstance(e, urllib.error.HTTPError) else e
            raise ModelLoadError(f"vLLM at {self.api_base} did not load LoRA adapter '{name}' from {path}: {detail} "
                                 "(start vLLM with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)") from None
        if name not in self.adapters:
            self.adapters.append(name)

    def timeout(self, max_tokens: int) -> float:
        """Seconds a request for up to `max_tokens` tokens may take: model.timeout_s when set, else
        model.timeout_base_s + max_tokens / model.min_tokens_per_s."""
        if self.timeout_s is not None:
            return self.timeout_s
        return self.timeout_base_s + max_tokens / self.min_tokens_per_s

    def size(self) -> None:
        """Set the requests in flight from the server when model.concurrency is null (see `server_slots`)."""
        if self.concurrency is None:
            self.concurrency, self.sized_by = server_slots(self.provider, self.api_base)

    def describe(self, max_tokens: int) -> str:
        """One line: the requests in flight and why, and the per-request timeout."""
        if self.timeout_s is not None:
            timeout = f"{self.timeout_s:g} s per request (model.timeout_s)"
        else:
            timeout = (f"{self.timeout(max_tokens):.0f} s per request of up to {max_tokens} tokens (model.timeout_base_s="
                       f"{self.timeout_base_s:g} + max_tokens / model.min_tokens_per_s={self.min_tokens_per_s:g})")
        return (f"model {self.name} at {self.api_base or 'the provider'}: {self.concurrency} request"
                f"{'s' * (self.concurrency != 1)} at a time ({self.sized_by}); timeout {timeout}; retries "
                f"{self.retries} (not after a timeout){'; streamed' if self.stream else ''}")

    def check(self) -> None:
        """Fail fast, with one clear message, when the server cannot be reached."""
        if not self.api_base:
            return
        base = self.api_base.rstrip("/")
        url = base + ("/api/tags" if self.provider == "ollama" else "/models")
        try:
            with urllib.request.urlopen(url, timeout=10.0):
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
        self.size()
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
        timeout = self.timeout(params.max_tokens)
        request = dict(model=model, messages=messages, api_base=self.api_base, api_key=self.api_key or "none",
                       temperature=params.temperature, max_tokens=params.max_tokens, top_p=params.top_p,
                       seed=params.seed, timeout=timeout, num_retries=0, max_retries=0,
                       **({"extra_body": self.extra_body} if self.extra_body else {}))
        error = ""
        for attempt in range(self.retries + 1):
            start = time.perf_counter()
            try:
                # the deadline cancels the request as a whole (httpx's own timeout is per read); cancelling it
                # closes the connection, which tells the server to stop generating
                async with asyncio.timeout(timeout):
                    text, tokens_in, tokens_out = await (self._streamed(litellm, request) if self.stream
                                                         else self._whole(litellm, request))
                gen = Generation(text=text, tokens_in=tokens_in, tokens_out=tokens_out,
                                 latency_ms=(time.perf_counter() - start) * 1000)
                self._cache_put(key, gen)
                return gen
            except Exception as e:  # noqa: BLE001 - any failure of a served model is an attempt's outcome
                if isinstance(e, TimeoutError):
                    e = TimeoutError(f"no complete reply within {timeout:.0f} s")
                error = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
                if type(e).__name__ in PERMANENT + TIMEOUTS:
                    break
                if attempt < self.retries:
                    await asyncio.sleep(max(self.backoff_s * 2**attempt, retry_after(e)))
        return Generation(text="", error=error)

    @staticmethod
    async def _whole(litellm, request: dict) -> tuple[str, int, int]:
        r = await litellm.acompletion(**request)
        text = r.choices[0].message.content
        if not isinstance(text, str):
            raise ValueError("reply holds no text")
        usage = getattr(r, "usage", None)
        return text, int(getattr(usage, "prompt_tokens", 0) or 0), int(getattr(usage, "completion_tokens", 0) or 0)

    @staticmethod
    async def _streamed(litellm, request: dict) -> tuple[str, int, int]:
        """The reply in chunks; the token counts from the server's usage chunk, else litellm's estimate (it counts
        the text when the server sends none), else the chunks of text."""
        r = await litellm.acompletion(**request, stream=True, stream_options={"include_usage": True})
        parts, usage = [], None
        try:
            async for chunk in r:
                usage = getattr(chunk, "usage", None) or usage
                if chunk.choices and (piece := getattr(chunk.choices[0].delta, "content", None)):
                    parts.append(piece)
        finally:
            close = getattr(getattr(r, "completion_stream", None), "aclose", None)
            if close is not None:
                await close()
        tokens_in = int(getattr(usage, "prompt_tokens", 0) or 0)
        tokens_out = int(getattr(usage, "completion_tokens", 0) or 0) or len(parts)
        return "".join(parts), tokens_in, tokens_out

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


def server_slots(provider: str, api_base: str | None, timeout_s: float = 10.0) -> tuple[int, str]:
    """How many requests the server behind `api_base` serves at once, and how that was found out:

    - llama.cpp's llama-server: `GET /props` says `total_slots` (its --parallel);
    - llama-cpp-python's server (its FastAPI schema, `GET /openapi.json`, has /extras/tokenize; its /v1/models says
      `owned_by: me`): one request at a time, behind a lock;
    - `transformers serve` (its schema has /v1/systemone and /load_model): one at a time on one inference thread,
      unless started with --continuous-batching (then set model.concurrency);
    - vLLM, Ollama, anything else, or no api_base (a hosted API): not exposed, FALLBACK_CONCURRENCY[provider].
    """
    fallback = FALLBACK_CONCURRENCY[provider]
    if not api_base:
        return fallback, f"no model.api_base: the provider's default for {provider}"
    base = api_base.rstrip("/")
    root = base.removesuffix("/v1")
    if (props := _get_json(root + "/props", timeout_s)) is not None and isinstance(props.get("total_slots"), int):
        return max(1, props["total_slots"]), "llama.cpp server: /props says total_slots"
    if provider != "ollama":
        paths = set((_get_json(root + "/openapi.json", timeout_s) or {}).get("paths") or {})
        models = [m for m in (_get_json(base + "/models", timeout_s) or {}).get("data") or [] if isinstance(m, dict)]
        if "/extras/tokenize" in paths or any(m.get("owned_by") == "me" for m in models):
            return 1, "llama-cpp-python's server answers one request at a time"
        if {"/v1/systemone", "/load_model"} <= paths or any(isinstance(m.get("status"), dict) for m in models):
            return 1, "transformers serve generates one request at a time (unless --continuous-batching)"
    why = {"vllm": "vLLM batches continuously and does not expose max_num_seqs",
           "ollama": "Ollama does not expose OLLAMA_NUM_PARALLEL, 1 unless set",
           "openai": "the server does not say how many requests it serves at once"}[provider]
    return fallback, f"{why}; the default for {provider}"


def _get_json(url: str, timeout_s: float):
    """The JSON object at `url`, or None when there is none (no route, not JSON, unreachable)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            value = json.loads(r.read())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


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
