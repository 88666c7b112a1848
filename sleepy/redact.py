"""Secrets stay out of everything a run leaves behind.

A config key whose name holds a secret word (api_key, token, secret, password, passwd, private_key, credentials,
authorization, as a word of the dotted key: `model.api_key`, `hf_token`, not `max_tokens`) is shown as `***` in
MLflow params, tags and run names and in the Hydra files of the job's output directory (`.hydra/config.yaml`,
`hydra.yaml`, `overrides.yaml`, a sweep's `multirun.yaml`); its value is scrubbed from any other text written there.
An interpolation such as `${oc.env:OPENAI_API_KEY}` is no secret and is kept: it is the way to pass a key that is
never written down.

Hydra writes its files before the task starts; `RedactSecrets`, a Hydra callback (conf/config.yaml lists it under
hydra.callbacks), rewrites them at job start. Hydra's logs (the launcher lists every job's overrides) go through
`SecretFilter` (conf/hydra/*_logging/redacted.yaml).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from hydra.experimental.callback import Callback

MASK = "***"
SECRET = re.compile(r"(?:^|[._\-])(?:api_?key|token|secret|password|passwd|private_?key|credentials?|authorization)"
                    r"(?:$|[._\-])", re.IGNORECASE)
_ASSIGNMENT = re.compile(r"(?P<key>[\w.+~/\-]+)=(?P<value>[^,\s\]}]*)")
_MIN_SCRUB = 6  # shorter values ("EMPTY", "x") are masked where their key names them, not searched for in text


def is_secret(key: str) -> bool:
    """Whether a (dotted) config key names a secret."""
    return bool(SECRET.search(key))


def _hidden(value) -> bool:
    """A value worth masking: set, and not an interpolation that reads it from elsewhere."""
    return value not in (None, "", "null", "None") and not (isinstance(value, str) and value.startswith("${"))


def secret_values(config, prefix: str = "") -> set[str]:
    """The values of the secret keys of a nested config (dicts and lists), as text."""
    found: set[str] = set()
    items = config.items() if isinstance(config, dict) else enumerate(config) if isinstance(config, list) else ()
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, dict | list):
            found |= secret_values(value, name + ".")
        elif is_secret(name) and _hidden(value):
            found.add(str(value))
    return found


def redact(config, prefix: str = ""):
    """A copy of a nested config with the values of its secret keys masked."""
    if isinstance(config, dict):
        return {k: _redact_item(f"{prefix}{k}", v) for k, v in config.items()}
    if isinstance(config, list):
        return [redact(v, prefix) if isinstance(v, dict | list) else v for v in config]
    return config


def _redact_item(name: str, value):
    if isinstance(value, dict | list):
        return redact(value, name + ".")
    return MASK if is_secret(name) and _hidden(value) else value


def scrub(text: str, values: set[str] = frozenset()) -> str:
    """`text` with every `key=value` of a secret key masked (overrides, Hydra's override_dirname) and every known
    secret value replaced."""
    def mask(m: re.Match) -> str:
        key = m["key"].lstrip("+~")
        return f"{m['key']}={MASK}" if is_secret(key) and _hidden(m["value"]) else m[0]

    text = _ASSIGNMENT.sub(mask, text)
    for value in sorted(values, key=len, reverse=True):
        if len(value) >= _MIN_SCRUB:
            text = text.replace(value, MASK)
    return text


def redact_file(path: Path, values: set[str]) -> None:
    """Rewrite a YAML file Hydra wrote (a config, or a list of overrides) with its secrets masked; atomically, as
    several jobs of a sweep may rewrite the sweep's multirun.yaml at once."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return
    clean = _clean(redact(data), values)
    if clean == data:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(yaml.safe_dump(clean, sort_keys=False, allow_unicode=True), encoding="utf-8")
    os.replace(tmp, path)


def _clean(data, values: set[str]):
    if isinstance(data, dict):
        return {k: _clean(v, values) for k, v in data.items()}
    if isinstance(data, list):
        return [_clean(v, values) for v in data]
    return scrub(data, values) if isinstance(data, str) else data


def hydra_files(config) -> list[Path]:
    """The files Hydra wrote for the job `config` (with its `hydra` node) describes."""
    from hydra.types import RunMode

    h = config.hydra
    files = []
    if h.output_subdir is not None:
        out = Path(h.runtime.output_dir) / h.output_subdir
        files += [out / "config.yaml", out / "hydra.yaml", out / "overrides.yaml"]
    if h.mode == RunMode.MULTIRUN:
        files.append(Path(h.sweep.dir) / "multirun.yaml")
    return files


class SecretFilter(logging.Filter):
    """A logging filter that masks secret overrides in every record (Hydra's launcher logs each job's overrides);
    conf/hydra/*_logging/redacted.yaml put it on Hydra's handlers."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if (clean := scrub(message)) != message:
            record.msg, record.args = clean, ()
        return True


class RedactSecrets(Callback):
    """Hydra callback: mask secrets in the files Hydra wrote for the job before the job runs."""

    def on_job_start(self, config, **kwargs) -> None:
        from omegaconf import OmegaConf

        values = secret_values(OmegaConf.to_container(config, resolve=False))
        for path in hydra_files(config):
            redact_file(path, values)
