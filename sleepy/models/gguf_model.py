"""GGUF model files: check that a file is a model llama.cpp can serve, and dequantize it once into a standard
Hugging Face directory for the night's trainer (cached by the file's SHA-256)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"GGUF"


@dataclass(frozen=True)
class GgufModel:
    path: Path
    architecture: str
    blocks: int
    name: str


def need_gguf():
    """The gguf package, or a ModelLoadError saying which extra brings it."""
    try:
        import gguf
    except ImportError:
        from sleepy.models.base import ModelLoadError

        raise ModelLoadError("GGUF files need the gguf package: pip install -e '.[llamacpp]'") from None
    return gguf


SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9


def read_header(path: str | Path) -> tuple[dict, list[str]]:
    """(metadata, tensor names) of a GGUF file: its scalar and string values (arrays are skipped: the tokenizer's
    are hundreds of thousands of entries, which the gguf package's reader takes a minute to parse on a busy CPU)."""
    import mmap
    import struct

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        pos = 0

        def take(fmt: str):
            nonlocal pos
            (value,) = struct.unpack_from(fmt, m, pos)
            pos += struct.calcsize(fmt)
            return value

        def text() -> str:
            nonlocal pos
            n = take("<Q")
            pos += n
            if pos > len(m):
                raise ValueError("a string runs past the end of the file")
            return m[pos - n:pos].decode("utf-8", errors="replace")

        def value(kind: int):
            nonlocal pos
            if kind in SCALARS:
                return take(SCALARS[kind])
            if kind == STRING:
                return text()
            if kind == ARRAY:
                inner, n = take("<I"), take("<Q")
                if inner in SCALARS:
                    pos += n * struct.calcsize(SCALARS[inner])
                else:
                    for _ in range(n):
                        value(inner)
                return None
            raise ValueError(f"unknown value type {kind}")

        take("<I")  # magic, checked by the caller
        version = take("<I")
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} is not supported")
        n_tensors, n_kv = take("<Q"), take("<Q")
        meta = {}
        for _ in range(n_kv):
            key = text()
            meta[key] = value(take("<I"))
        names = []
        for _ in range(n_tensors):
            names.append(text())
            dims = take("<I")
            pos += 8 * dims + 4 + 8  # the dims, the type, the offset
        return meta, names


def inspect_model(path: str | Path, key: str = "model.gguf") -> GgufModel:
    """The architecture, block count and name of the GGUF model at `path`; a ValueError naming `key` and the file
    when it is missing, not a GGUF file, or a GGUF that holds no model (a LoRA adapter, a vocabulary)."""
    import struct

    path = Path(path).expanduser()
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ValueError(f"{key}={path}: cannot read it ({e.strerror or e})") from None
    if magic != MAGIC:
        raise ValueError(f"{key}={path}: not a GGUF file (it starts with {magic!r}, not {MAGIC!r})")
    try:
        meta, tensors = read_header(path)
    except (ValueError, struct.error, OSError) as e:
        raise ValueError(f"{key}={path}: a damaged GGUF file ({type(e).__name__}: {str(e)[:200]})") from None
    kind = meta.get("general.type") or "model"
    arch = meta.get("general.architecture")
    if kind != "model":
        raise ValueError(f"{key}={path}: a GGUF {kind} (general.type={kind!r}), not a model")
    blocks = meta.get(f"{arch}.block_count") if arch else None
    if not arch or not blocks or "token_embd.weight" not in tensors:
        raise ValueError(f"{key}={path}: a GGUF file that holds no model (no general.architecture, block count "
                         "or token embeddings)")
    return GgufModel(path, str(arch), int(blocks), str(meta.get("general.name") or path.stem))


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file, remembered in the cache by path, size and modification time (a GB file takes
    seconds to hash)."""
    from sleepy.cache import cache_root

    path = Path(path).resolve()
    st = path.stat()
    index = cache_root() / "gguf" / "sha256.json"
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    try:
        known = json.loads(index.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    known[key] = digest.hexdigest()
    index.parent.mkdir(parents=True, exist_ok=True)
    tmp = index.with_name(f".{index.name}.{os.getpid()}")
    tmp.write_text(json.dumps(known, indent=0))
    os.replace(tmp, index)
    return known[key]


@contextlib.contextmanager
def _no_tensor_bar():
    """Without transformers' per-tensor progress bar over the GGUF (a plain tqdm that its progress-bar switch
    misses): hundreds of redraws in the job's log."""
    from unittest import mock

    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    if not hasattr(gguf_utils, "tqdm"):
        yield
        return
    with mock.patch.object(gguf_utils, "tqdm", lambda items, **_: items):
        yield


def dequantized_dir(path: str | Path, dtype: str = "bfloat16", log=print) -> Path:
    """A Hugging Face directory (config, safetensors, tokenizer with its chat template) holding the GGUF model's
    weights dequantized to `dtype`; made once per file content and dtype, then reused."""
    from sleepy.cache import cache_root

    inspect_model(path)
    out = cache_root() / "gguf" / "dequantized" / f"{file_sha256(path)[:16]}-{dtype}"
    if (out / "config.json").exists():
        return out
    need_gguf()  # transformers reads GGUF files with it
    import time

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    from sleepy.models.hf import quiet_progress

    log(f"dequantizing {path} to {dtype} for training (once; cached in {out})")
    start = time.perf_counter()
    path = Path(path).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        with quiet_progress(), _no_tensor_bar():
            tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
            model = AutoModelForCausalLM.from_pretrained(
                str(path.parent), gguf_file=path.name, quantization_config=GgufConfig(dequantize=True),
                dtype=getattr(torch, dtype))
            # plain weights now: the directory must load as an ordinary model, without the gguf package
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            if hasattr(model, "hf_quantizer"):
                model.hf_quantizer = None
            model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.chmod(0o755)  # mkdtemp made it private; the cache is shared like the rest of it
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"dequantized in {time.perf_counter() - start:.0f} s: {out}")
    return out
