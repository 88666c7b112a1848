"""MLflow: one run per Hydra job, named for what it runs; the flattened config as params, the git commit and Hydra's
choices and overrides as tags; metrics with step = cycle; artifacts (the Hydra config, episodes as Parquet, JSON).

The default store is `sqlite:///mlruns/mlflow.db` under the working directory, with artifacts beside it,
`mlruns/artifacts` (current MLflow refuses the plain file store). A run that dies without ending is marked KILLED by
the next job that opens the experiment on the same host, so no run stays RUNNING forever.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import subprocess
import time
from pathlib import Path

LOCAL_URI = "sqlite:///mlruns/mlflow.db"


def tracking_uri(uri: str | None) -> str:
    """The store's URI; a relative sqlite path is made absolute (it follows the working directory)."""
    uri = uri or LOCAL_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    return uri


def artifact_location(uri: str, artifact_root: str | None) -> str | None:
    """Where a new experiment's artifacts go: artifact_root, or for a sqlite store the `artifacts` folder beside it."""
    if artifact_root is None and uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()
    return artifact_root


def local_dirs(uri: str, artifact_root: str | None) -> list[Path]:
    """The local directories a store at `uri` writes to (none for a tracking server)."""
    uri = tracking_uri(uri)
    dirs = [Path(uri.removeprefix("sqlite:///")).parent] if uri.startswith("sqlite:///") else []
    location = artifact_location(uri, artifact_root)
    if location and location.startswith(("file:", "/")):
        dirs.append(Path(location.removeprefix("file://")))
    return dirs


def run_name(cfg) -> str:
    """What a run runs: the cycles of its experiment, or one stage and cycle; then the command line's overrides."""
    what = f"cycles{cfg.cycles}" if cfg.stage == "cycle" else f"{cfg.stage}{cfg.cycle}"
    hc = _hydra()
    return f"{what}:{' '.join(hc.overrides.task) or 'defaults'}"[:250] if hc else what


def hydra_tags() -> dict[str, str]:
    """Hydra's choices of config groups, the overrides and the output directory, as run tags."""
    hc = _hydra()
    if hc is None:
        return {}
    tags = {f"hydra.choice.{k}": str(v) for k, v in hc.runtime.choices.items() if not k.startswith("hydra/")}
    tags["hydra.overrides"] = " ".join(hc.overrides.task)
    tags["hydra.output_dir"] = hc.runtime.output_dir
    return tags


def _hydra():
    """Hydra's config of the running job, or None outside a Hydra job (e.g. the compose API)."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def flatten(d, prefix: str = "") -> dict[str, str]:
    """{'a': {'b': 1}} -> {'a.b': '1'}; lists as their repr."""
    out: dict[str, str] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = str(value)[:6000]
    return out


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True,
                              timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class Tracker:
    """One MLflow run; every call retries briefly when a parallel job holds the sqlite store."""

    def __init__(self, uri: str | None, experiment: str, artifact_root: str | None = None):
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri(uri)
        with _store_lock(self.uri):  # parallel jobs must not create or migrate one sqlite store at once
            self.client = MlflowClient(self.uri)
            self.experiment_id = self._retry(self._experiment, experiment, artifact_root)
        self.run_id: str | None = None

    def _experiment(self, name: str, artifact_root: str | None) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=artifact_location(self.uri, artifact_root))
        except Exception:  # noqa: BLE001 - a parallel job created it first
            return self.client.get_experiment_by_name(name).experiment_id

    def _retry(self, fn, *args, tries: int = 20, **kwargs):
        for attempt in range(tries):
            try:
                return fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001
                if "locked" not in str(e).lower() or attempt == tries - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))
        return None

    def start(self, run_id: str | None, run_name: str | None = None) -> str:
        """Start a new run, or reopen run_id to resume it."""
        self.reap_dead_runs()
        if run_id:
            run = self._retry(self.client.get_run, run_id)
            self._retry(self.client.update_run, run.info.run_id, status="RUNNING")
        else:
            run = self._retry(self.client.create_run, self.experiment_id, run_name=run_name)
        self.run_id = run.info.run_id
        self.set_tags({"sleepy.host": socket.gethostname(), "sleepy.pid": str(os.getpid()),
                       "git.commit": git_commit()})
        return self.run_id

    def reap_dead_runs(self) -> int:
        """Mark KILLED the RUNNING runs of this experiment whose process on this host is gone."""
        from mlflow.entities import ViewType

        host, reaped = socket.gethostname(), 0
        runs = self._retry(self.client.search_runs, [self.experiment_id], "attributes.status = 'RUNNING'",
                           run_view_type=ViewType.ACTIVE_ONLY, max_results=1000)
        for run in runs:
            tags = run.data.tags
            if tags.get("sleepy.host") != host or not tags.get("sleepy.pid", "").isdigit():
                continue
            if not _alive(int(tags["sleepy.pid"])):
                self._retry(self.client.set_terminated, run.info.run_id, status="KILLED")
                reaped += 1
        return reaped

    def log_config(self, config: dict) -> None:
        """The resolved config as params (flattened), Hydra's choices and overrides as tags, its .hydra folder."""
        self.log_params(flatten(config))
        self.set_tags(hydra_tags())
        if hc := _hydra():
            self.log_artifacts(Path(hc.runtime.output_dir) / ".hydra", "hydra")

    def log_frame(self, frame, artifact_path: str, name: str) -> None:
        """A polars frame as a Parquet artifact."""
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            frame.write_parquet(Path(d) / name)
            self.log_artifacts(Path(d) / name, artifact_path)

    def log_json(self, obj, artifact_path: str, name: str) -> None:
        import json
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            (Path(d) / name).write_text(json.dumps(obj, indent=1))
            self.log_artifacts(Path(d) / name, artifact_path)

    def log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        existing = self._retry(self.client.get_run, self.run_id).data.params
        items = [Param(k, v) for k, v in params.items() if k not in existing]
        for i in range(0, len(items), 100):
            self._retry(self.client.log_batch, self.run_id, params=items[i:i + 100])

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self._retry(self.client.log_batch, self.run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(items), 500):
            self._retry(self.client.log_batch, self.run_id, metrics=items[i:i + 500])

    def log_artifacts(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self._retry(self.client.log_artifacts, self.run_id, str(path), artifact_path)
        elif path.exists():
            self._retry(self.client.log_artifact, self.run_id, str(path), artifact_path)

    def end(self, status: str = "FINISHED") -> None:
        if self.run_id:
            self._retry(self.client.set_terminated, self.run_id, status=status)


@contextlib.contextmanager
def _store_lock(uri: str):
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
