"""A chat server that speaks the OpenAI and Ollama protocols and answers from a script.

For tests and benchmarks: clients (litellm included) talk to it over HTTP on 127.0.0.1 as to any
served model. The script says, per koan, what each successive request gets: a reply (a right or a
wrong fix), an HTTP error, a malformed body, extra latency, or no answer at all. A streamed
request (`"stream": true`) gets its reply as server-sent events, a word per chunk, `token_s`
apart. The log records, per request, when the client closed the connection before the
answer was complete (`closed_after_s`), as a server that stops abandoned work would see it.

    script = Script({"bc_bank_transfer": [Step(reply=wrong), Step(status=503), Step(reply=fix)]})
    with ScriptedLLMServer(script, latency_s=0.05) as server:
        ...  # model.api_base = server.url (Ollama) or server.url + "/v1" (OpenAI)
"""

from __future__ import annotations

import json
import os
import select
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Step:
    """What one request gets."""

    reply: str = ""
    status: int = 200  # an HTTP error status instead of a reply, e.g. 500 or 503
    delay_s: float | None = None  # latency before answering; None: the server's latency_s
    malformed: bool = False  # a 200 whose body is not JSON
    hang_s: float = 0.0  # hold the request this long without answering (a client timeout)
    headers: tuple[tuple[str, str], ...] = ()  # extra response headers, e.g. (("Retry-After", "2"),)
    body: str | None = None  # this raw body instead of a reply (HTML, JSON of the wrong shape, ...)
    content_type: str = "application/json"  # of `body`
    drop: bool = False  # close the connection without any response
    token_s: float = 0.0  # a streamed reply: seconds between its chunks


@dataclass
class Script:
    """Steps per key; a request takes the next step of the longest key found in its messages.

    The last step of a list repeats. Requests matching no key take `default`.
    """

    steps: dict[str, list[Step]] = field(default_factory=dict)
    default: list[Step] = field(default_factory=lambda: [Step(reply="I cannot help with that.")])
    _served: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def next(self, prompt: str) -> tuple[str, int, Step]:
        keys = [k for k in self.steps if k in prompt]
        key = max(keys, key=len) if keys else ""
        steps = self.steps.get(key, self.default) if key else self.default
        with self._lock:
            i = self._served.get(key, 0)
            self._served[key] = i + 1
        return key, i, steps[min(i, len(steps) - 1)]

    def served(self, key: str) -> int:
        with self._lock:
            return self._served.get(key, 0)


class ScriptedLLMServer:
    """Runs the server in a background thread; `url` is its base address."""

    def __init__(self, script: Script, latency_s: float = 0.0, host: str = "127.0.0.1", port: int = 0,
                 model: str = "scripted", strict_models: bool = False, slots: int | None = None,
                 model_fields: dict | None = None, openapi: dict | None = None):
        self.script = script
        self.latency_s = latency_s
        self.model = model
        self.slots = slots  # like llama.cpp's llama-server: GET /props says total_slots (None: no /props route)
        self.model_fields = model_fields or {}  # extra fields of each /v1/models entry, as other servers add
        self.openapi = openapi  # a FastAPI server's GET /openapi.json (None: no such route)
        self.strict_models = strict_models  # like vLLM: only the base model and loaded adapters answer
        self.adapters: dict[str, str] = {}  # LoRA adapters loaded at runtime, name -> path
        self.log: list[dict] = []
        self._log_lock = threading.Lock()
        self._httpd = ThreadingHTTPServer((host, port), _handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> ScriptedLLMServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> ScriptedLLMServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def record(self, entry: dict) -> None:
        with self._log_lock:
            self.log.append(entry)


def _prompt_of(messages) -> str:
    parts = []
    for m in messages or []:
        content = m.get("content", "") if isinstance(m, dict) else ""
        if isinstance(content, list):  # OpenAI content parts
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        parts.append(str(content))
    return "\n".join(parts)


def _handler(server: ScriptedLLMServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def _send(self, status: int, body: bytes, content_type: str = "application/json", headers=()) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, obj) -> None:
            self._send(status, json.dumps(obj).encode())

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/v1/models":
                self._json(200, {"object": "list", "data": [{"id": server.model, "object": "model",
                                                             **server.model_fields}]})
            elif self.path.rstrip("/") == "/openapi.json" and server.openapi is not None:
                self._json(200, server.openapi)
            elif self.path.rstrip("/") == "/props" and server.slots is not None:
                self._json(200, {"total_slots": server.slots, "model_alias": server.model})
            elif self.path.rstrip("/") == "/api/tags":
                self._json(200, {"models": [{"name": server.model, "model": server.model}]})
            else:
                self._json(404, {"error": f"no route {self.path}"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                self._json(400, {"error": "request body is not JSON"})
                return
            path = self.path.rstrip("/")
            if path == "/v1/load_lora_adapter":  # vLLM's runtime LoRA loading
                name, where = body.get("lora_name"), body.get("lora_path")
                if not name or not where or not os.path.isdir(where):
                    self._json(400, {"error": f"cannot load LoRA adapter {name!r} from {where!r}"})
                    return
                server.adapters[name] = where
                self._send(200, f"Success: LoRA adapter '{name}' added successfully.".encode(), "text/plain")
                return
            model = body.get("model", server.model)
            if server.strict_models and path != "/api/show" and model not in {server.model, *server.adapters}:
                self._json(404, {"error": {"message": f"The model `{model}` does not exist.", "type": "NotFoundError"}})
                return
            if path == "/api/show":
                self._json(200, {"modelfile": "", "parameters": "", "template": "", "details": {}, "model_info": {}})
                return
            if path not in ("/v1/chat/completions", "/chat/completions", "/api/chat"):
                self._json(404, {"error": f"no route {self.path}"})
                return
            prompt = _prompt_of(body.get("messages"))
            key, index, step = server.script.next(prompt)
            entry = {"path": path, "key": key, "index": index, "time": time.time(), "body": body,
                     "authorization": self.headers.get("Authorization"), "closed_after_s": None}
            server.record(entry)
            time.sleep(server.latency_s if step.delay_s is None else step.delay_s)
            if step.hang_s:
                if self._client_closed_within(step.hang_s):
                    entry["closed_after_s"] = time.time() - entry["time"]
                self.close_connection = True
                return
            if step.drop:
                self.close_connection = True
                return
            if step.status != 200:
                error = {"error": {"message": f"scripted {step.status}", "type": "server_error"}}
                self._send(step.status, json.dumps(error).encode(), headers=step.headers)
                return
            if step.body is not None:
                self._send(200, step.body.encode(), step.content_type, step.headers)
                return
            if step.malformed:
                self._send(200, b'{"choices": [ this is not json')
                return
            tokens_in, tokens_out = len(prompt.split()), len(step.reply.split())
            if path == "/api/chat":
                self._ollama(body, step.reply, tokens_in, tokens_out)
            elif body.get("stream"):
                self._stream(body, step, tokens_in, tokens_out, entry)
            else:
                self._json(200, {
                    "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion",
                    "created": int(time.time()), "model": body.get("model", server.model),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": step.reply},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": tokens_in, "completion_tokens": tokens_out,
                              "total_tokens": tokens_in + tokens_out},
                })

        def _client_closed_within(self, seconds: float) -> bool:
            """Wait up to `seconds` for the client to close its end of the connection; whether it did."""
            deadline = time.monotonic() + seconds
            while (left := deadline - time.monotonic()) > 0:
                readable, _, _ = select.select([self.connection], [], [], min(left, 0.05))
                if readable:
                    try:
                        if self.connection.recv(1, socket.MSG_PEEK) == b"":
                            return True
                    except OSError:
                        return True
                    time.sleep(min(left, 0.05))  # bytes of a next request: not a close
            return False

        def _stream(self, body: dict, step: Step, tokens_in: int, tokens_out: int, entry: dict) -> None:
            """The reply as OpenAI chat.completion.chunk events, a word each, step.token_s apart; a write that fails
            (the client closed the connection) ends it, as llama.cpp and vLLM stop generating then."""
            base = {"id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion.chunk",
                    "created": int(time.time()), "model": body.get("model", server.model)}
            words = step.reply.split(" ")
            words = [w + " " for w in words[:-1]] + [words[-1]] if step.reply else []  # joined: the reply
            events = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": w}, "finish_reason": None}]}
                      for w in words]
            events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            if (body.get("stream_options") or {}).get("include_usage"):
                events.append({**base, "choices": [], "usage": {"prompt_tokens": tokens_in, "completion_tokens": tokens_out,
                                                                "total_tokens": tokens_in + tokens_out}})
            self.close_connection = True
            try:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                for i, event in enumerate(events):
                    if i and step.token_s:
                        time.sleep(step.token_s)
                    self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                    self.wfile.flush()
                    entry["chunks"] = i + 1
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
            except OSError:  # BrokenPipeError, ConnectionResetError: the client went away
                entry["closed_after_s"] = time.time() - entry["time"]

        def _ollama(self, body: dict, reply: str, tokens_in: int, tokens_out: int) -> None:
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            final = {"model": body.get("model", server.model), "created_at": now,
                     "message": {"role": "assistant", "content": reply if not body.get("stream") else ""},
                     "done": True, "done_reason": "stop", "prompt_eval_count": tokens_in, "eval_count": tokens_out}
            if not body.get("stream"):
                self._json(200, final)
                return
            chunk = {"model": final["model"], "created_at": now, "message": {"role": "assistant", "content": reply},
                     "done": False}
            lines = (json.dumps(chunk) + "\n" + json.dumps(final) + "\n").encode()
            self._send(200, lines, "application/x-ndjson")

    return Handler


def answer_script(answer: str) -> Script:
    """A script for the builtin koans: every request for a koan (found by its title) gets its solution
    (`solution`), its broken code (`broken`), or the broken code first and the solution next (`second`)."""
    from sleepy import prompt
    from sleepy.koans import load_pack

    def reply(code: str) -> Step:
        return Step(reply=prompt.answer(code) + "\n")

    plans = {"solution": lambda k: [reply(k.solution)], "broken": lambda k: [reply(k.code)],
             "second": lambda k: [reply(k.code), reply(k.solution)]}
    return Script({k.title: plans[answer](k) for k in load_pack().koans})


def main(argv: list[str] | None = None) -> int:
    """python -m sleepy.testing.scripted_llm: serve a script until interrupted."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m sleepy.testing.scripted_llm", description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    ap.add_argument("--answer", choices=["solution", "broken", "second"], default="second",
                    help="what each builtin koan gets (default: its broken code, then its solution)")
    ap.add_argument("--script", help='a JSON file {"text in the prompt": [{"reply": "..."}, {"status": 503}, ...]}')
    args = ap.parse_args(argv)
    if args.script:
        with open(args.script, encoding="utf-8") as f:
            raw = json.load(f)
        script = Script({key: [Step(**s) for s in steps] for key, steps in raw.items()})
    else:
        script = answer_script(args.answer)
    server = ScriptedLLMServer(script, latency_s=args.latency, port=args.port)
    print(f"scripted LLM server on {server.url} (OpenAI: {server.url}/v1, Ollama: {server.url})", flush=True)
    try:
        server._httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
