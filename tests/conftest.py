import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture(scope="session")
def verdict_cache(tmp_path_factory):
    """One fresh verdict cache for the test session, so tests never read a stale user cache."""
    return tmp_path_factory.mktemp("verdicts")


@pytest.fixture(scope="session")
def sandbox(verdict_cache):
    from sleepy.sandbox import Sandbox

    return Sandbox(cache_dir=verdict_cache)


@pytest.fixture(scope="session")
def builtin():
    from sleepy.koans import load_pack

    return load_pack()


def run_cli(*args, cwd=ROOT, env_extra=None, timeout=300):
    """Run a console entry point as a subprocess: (returncode, stdout, stderr)."""
    import subprocess

    env = dict(os.environ, **(env_extra or {}))
    r = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=timeout)
    return r.returncode, r.stdout, r.stderr
