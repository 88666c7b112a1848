"""The Rust toolchain the judge compiles with: rustc (resolved past rustup's proxies), its version, clippy-driver."""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path


@functools.cache
def toolchain() -> tuple[str, str, str | None]:
    """(rustc path, `rustc -vV` text, clippy-driver path or None), resolved past rustup proxies."""
    rustc = shutil.which("rustc")
    if rustc is None:
        raise RuntimeError("rustc not found on PATH: install a Rust toolchain (>= 1.85), e.g. with rustup")
    sysroot = subprocess.run([rustc, "--print", "sysroot"], capture_output=True, text=True, check=True).stdout
    real = Path(sysroot.strip()) / "bin" / "rustc"
    rustc = str(real) if real.exists() else rustc
    version = subprocess.run([rustc, "-vV"], capture_output=True, text=True, check=True).stdout
    clippy = Path(sysroot.strip()) / "bin" / "clippy-driver"
    return rustc, version, str(clippy) if clippy.exists() else None


def sysroot() -> str:
    return str(Path(toolchain()[0]).parents[1])
