"""MLflow: one run per Hydra job, named for what it changes; the flattened config as params (secrets masked), the
source (git commit), Hydra's choices and overrides as tags; metrics with step = cycle; the koans each stage used as
dataset inputs; artifacts (the Hydra config, episodes as Parquet with a CSV summary, JSON).

The default store is `sqlite:///mlruns/mlflow.db` under the working directory, with artifacts beside it,
`mlruns/artifacts` (current MLflow refuses the plain file store). A run that dies without ending is marked KILLED by
the next job that opens the experiment on the same host, so no run stays RUNNING forever. The jobs of a Hydra
multirun are the child runs of one parent run per sweep (and experiment), so the UI groups a sweep.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
import subprocess
import time
from pathlib import Path

from sleepy.redact import is_secret, redact, redact_file, scrub, secret_values

LOCAL_URI = "sqlite:///mlruns/mlflow.db"
DESCRIPTION = ("sleepy: an agent that fixes Rust compile errors by day and learns from its failures by night. One run "
               "per Hydra job (params: the resolved config; metrics eval/*, day/*, recall/*, night/*, cl/* at step = "
               "cycle, night/loss at step = training step); the jobs of a sweep are the children of one parent run. "
               "The runs table: the sidebar's 'Model training' switch (?workflowType=machine_learning).")
# MLflow 3's UI files a GenAI experiment's runs under "Evaluation runs"; this tag asks for the classic runs table (3.17's
# UI follows its sidebar switch, default GenAI, instead: the description says where it is)
EXPERIMENT_TAGS = {"mlflow.note.content": DESCRIPTION, "mlflow.experimentKind": "custom_model_development"}
# overrides a run name leaves out: where things are (paths, stores, run ids), and what the name says after them
_UNNAMED = {"run_id", "baseline_run_id", "experiment_name", "source", "api_base", "uri", "artifact_root", "gguf",
            "system_metrics_s"}  # where things are and how they are watched: not what the run is
_STAGE_KEYS = {"stage", "cycle", "cycles"}
_RESUME_KEYS = {"run_id"} | _STAGE_KEYS  # params a resume, or the next stage of a run, changes by its nature
_PATH = re.compile(r"[^\s,\[\]=]*/([^\s,\[\]/=]+)/?")


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
    """What differs, then what runs: the command line's overrides in short (`lora=r16 seed=1`; in a sweep only the
    swept ones, the rest being the same for every job and in the `hydra.overrides` tag), then the cycles of the
    experiment or the one stage and cycle (`cycles3`, `eval2`)."""
    what = f"cycles{cfg.cycles}" if cfg.stage == "cycle" else f"{cfg.stage}{cfg.cycle}"
    hc = _hydra()
    overrides = list(hc.overrides.task) if hc else []
    if (sweep := sweep_dir()) is not None and (swept := {_key(o) for o in swept_overrides(sweep)}):
        overrides = [o for o in overrides if _key(o) in swept]
    short = " ".join(short_overrides(overrides))
    return f"{short} · {what}"[:250] if short else what


def _key(override: str) -> str:
    return override.lstrip("+~").partition("=")[0]


def short_overrides(overrides: list[str], stage: bool = False) -> list[str]:
    """Overrides as a name shows them: no `+`, paths cut to their last part; none that say where things are (stores,
    paths of outputs, URLs, run ids), no secret, and no stage keys unless `stage`."""
    out = []
    for override in overrides:
        key, sep, value = override.lstrip("+").partition("=")
        last = key.rsplit(".", 1)[-1]
        if is_secret(key) or last in _UNNAMED or last.endswith(("_dir", "_uri")) or "://" in value or \
                (last in _STAGE_KEYS and not stage):
            continue
        out.append(key + sep + _PATH.sub(r"\1", value))
    return out


def stage_tags(config: dict) -> dict[str, str]:
    """What the run runs, as tags to filter by: `sleepy.stage`, and `sleepy.cycles` (stage=cycle) or `sleepy.cycle`."""
    stage = str(config.get("stage"))
    if stage == "cycle":
        return {"sleepy.stage": stage, "sleepy.cycles": str(config.get("cycles"))}
    return {"sleepy.stage": stage, "sleepy.cycle": str(config.get("cycle"))}


def hydra_tags() -> dict[str, str]:
    """Hydra's choices of config groups, the overrides (in full, secrets masked) and the output directory."""
    hc = _hydra()
    if hc is None:
        return {}
    tags = {f"hydra.choice.{k}": str(v) for k, v in hc.runtime.choices.items() if not k.startswith("hydra/")}
    tags["hydra.overrides"] = scrub(" ".join(hc.overrides.task))
    tags["hydra.output_dir"] = hc.runtime.output_dir
    return tags


def _hydra():
    """Hydra's config of the running job, or None outside a Hydra job (e.g. the compose API)."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def sweep_dir() -> Path | None:
    """The sweep directory of the running Hydra multirun job; None outside a multirun."""
    from hydra.types import RunMode

    hc = _hydra()
    return Path(hc.sweep.dir).resolve() if hc is not None and hc.mode == RunMode.MULTIRUN else None


def swept_overrides(sweep: Path) -> list[str]:
    """The overrides a sweep sweeps (`lora=r4,r8`, `seed=range(2)`), read from its multirun.yaml; none where there is
    no such file (another sweeper) or Hydra cannot parse it."""
    import yaml

    try:
        task = yaml.safe_load((sweep / "multirun.yaml").read_text(encoding="utf-8"))["hydra"]["overrides"]["task"]
        from hydra.core.override_parser.overrides_parser import OverridesParser

        return [o.input_line for o in OverridesParser.create().parse_overrides(task) if o.is_sweep_override()]
    except Exception:  # noqa: BLE001 - a name falls back to the sweep dir's, or to all the overrides
        return []


def sweep_name(sweep: Path) -> str:
    """A sweep's parent run is named for the overrides it sweeps (`lora=r4,r8 seed=0,1 · sweep`)."""
    short = short_overrides(swept_overrides(sweep), stage=True)
    return f"{' '.join(short)} · sweep"[:250] if short else f"sweep {sweep.name}"


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


def _git(*args: str) -> str | None:
    try:
        r = subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def git_commit() -> str:
    return _git("rev-parse", "HEAD") or "unknown"


def source_tags() -> dict[str, str]:
    """MLflow's standard source tags (the UI shows them as the run's source and commit), and whether the checkout had
    uncommitted changes to tracked files."""
    import getpass

    tags = {"mlflow.source.type": "LOCAL", "mlflow.source.name": "python -m sleepy", "mlflow.user": getpass.getuser()}
    if (commit := _git("rev-parse", "HEAD")) is not None:
        tags["mlflow.source.git.commit"] = commit
        tags["sleepy.git.dirty"] = "true" if _git("status", "--porcelain", "--untracked-files=no") else "false"
        if (branch := _git("rev-parse", "--abbrev-ref", "HEAD")) not in (None, "HEAD"):
            tags["mlflow.source.git.branch"] = branch
    return tags


class Tracker:
    """One MLflow run; every call retries briefly when a parallel job holds the sqlite store."""

    def __init__(self, uri: str | None, experiment: str, artifact_root: str | None = None,
                 system_metrics_s: float = 0.0):
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        self.system_metrics_s = system_metrics_s
        self._monitor = None
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri(uri)
        with _store_lock(self.uri):  # parallel jobs must not create or migrate one sqlite store at once
            self.client = MlflowClient(self.uri)
            self.experiment_id = self._retry(self._experiment, experiment, artifact_root)
        self.run_id: str | None = None
        self.parent_id: str | None = None  # the sweep's parent run
        self.sweep: Path | None = None
        self.secrets: set[str] = set()  # the config's secret values, scrubbed from every tag and param

    def _experiment(self, name: str, artifact_root: str | None) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=artifact_location(self.uri, artifact_root),
                                                 tags=EXPERIMENT_TAGS)
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
        """Start a new run (in a multirun: a child of the sweep's parent run), or reopen run_id to resume it."""
        self.reap_dead_runs()
        tags = {"sleepy.host": socket.gethostname(), "sleepy.pid": str(os.getpid()), **source_tags()}
        self.sweep = sweep_dir()
        with self._sweep_lock():
            if run_id:
                run = self._retry(self.client.get_run, run_id)
                self._retry(self.client.update_run, run.info.run_id, status="RUNNING")
                self.parent_id = run.data.tags.get("mlflow.parentRunId")
            else:
                if self.sweep is not None:
                    self.parent_id = self._sweep_parent(self.sweep)
                    tags |= {"mlflow.parentRunId": self.parent_id, "sleepy.sweep_dir": str(self.sweep)}
                run = self._retry(self.client.create_run, self.experiment_id, run_name=run_name and scrub(run_name),
                                       tags=tags)
            if self.parent_id:
                self._retry(self.client.update_run, self.parent_id, status="RUNNING")
        self.run_id = run.info.run_id
        self.set_tags(tags)
        self._monitor_system(resumed=bool(run_id))
        return self.run_id

    def _monitor_system(self, resumed: bool) -> None:
        """MLflow's system metrics (system/cpu_utilization_percentage, system/system_memory_usage_megabytes, ...)
        sampled every system_metrics_s seconds until the run ends; a resumed run goes on from its last step. Nothing
        without psutil, which MLflow needs for them."""
        import importlib.util

        if self.system_metrics_s <= 0 or importlib.util.find_spec("psutil") is None:
            return
        import logging

        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # not a line per start and stop

        self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=self.system_metrics_s,
                                             resume_logging=resumed, tracking_uri=self.uri)
        self._monitor.start()

    def _sweep_parent(self, sweep: Path) -> str:
        """The parent run of the sweep in this store and experiment: created by the sweep's first job (the caller
        holds the sweep's lock), found by the others in the sweep directory's record."""
        record = sweep / ".sleepy-mlflow-parents.json"
        known = json.loads(record.read_text()) if record.exists() else {}
        key = f"{self.uri} {self.experiment_id}"
        if key in known and self._live(known[key]):
            return known[key]
        tags = {"sleepy.sweep_dir": str(sweep), "sleepy.sweep": "parent", **source_tags()}
        parent = self._retry(self.client.create_run, self.experiment_id, run_name=scrub(sweep_name(sweep)), tags=tags)
        if (sweep / "multirun.yaml").exists():
            self._retry(self.client.log_artifact, parent.info.run_id, str(sweep / "multirun.yaml"), "hydra")
        known[key] = parent.info.run_id
        tmp = record.with_name(f"{record.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=1))
        os.replace(tmp, record)
        return parent.info.run_id

    def _live(self, run_id: str) -> bool:
        try:
            return self._retry(self.client.get_run, run_id).info.lifecycle_stage == "active"
        except Exception:  # noqa: BLE001 - deleted, or the record is of another store
            return False

    def _sweep_lock(self):
        return _file_lock(self.sweep / ".sleepy-mlflow.lock") if self.sweep is not None else contextlib.nullcontext()

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
        """The resolved config as params (flattened, secrets masked), Hydra's choices and overrides and the stage as
        tags, the .hydra folder (secrets masked), and where a memory strategy recalls another run: that run's
        episodes as an input."""
        self.secrets = secret_values(config)
        self.log_params(flatten(redact(config)))
        self.set_tags(hydra_tags() | stage_tags(config))
        if (hc := _hydra()) and hc.output_subdir is not None:
            folder = Path(hc.runtime.output_dir) / hc.output_subdir
            for path in folder.glob("*.yaml"):  # Hydra's callback (sleepy.redact) did it, unless it was left out
                redact_file(path, self.secrets)
            self.log_artifacts(folder, "hydra")
        memory = config.get("memory") or {}
        if (config.get("agent") or {}).get("prompt") == "memory" and memory.get("source"):
            self.log_episodes_input(memory["source"], (config.get("episodes") or {}).get("uri", ""), "memory")

    def log_koans(self, stage: str, koans: list, source: str | Path) -> None:
        """The koans a stage attempts as a dataset input (context: the stage): named for their packs and split, one
        row per koan, and as digest the lock hash of exactly these koans (for a whole eval split, of the pack's
        eval.lock lines), so runs on the same koans show the same dataset."""
        import polars as pl

        from sleepy.koans.lock import digest

        if not koans:
            return
        packs = "+".join(sorted({k.pack or "builtin" for k in koans}))
        frame = pl.DataFrame({"koan": [k.id for k in koans], "family": [k.family for k in koans],
                              "pack": [k.pack or "builtin" for k in koans], "split": [k.split for k in koans],
                              "expected_errors": [" ".join(k.expected_errors) for k in koans],
                              "content_hash": [k.content_hash() for k in koans]})
        self._log_input(frame, f"{packs}/{koans[0].split}", digest(koans), str(source), stage)

    def log_episodes_input(self, run_id: str, store_uri: str, context: str) -> None:
        """Another run's episodes that this run reads (the memory strategy's `memory.source`), as a dataset input."""
        import polars as pl

        self._log_input(pl.DataFrame({"run_id": [run_id]}), f"episodes/{run_id}", run_id[:32], str(store_uri), context)

    def _log_input(self, frame, name: str, digest: str, source: str, context: str) -> None:
        from mlflow.data.polars_dataset import from_polars
        from mlflow.data.sources import LocalArtifactDatasetSource
        from mlflow.entities import DatasetInput, InputTag

        dataset = from_polars(frame, source=LocalArtifactDatasetSource(source), name=name, digest=digest)
        entry = DatasetInput(dataset._to_mlflow_entity(), [InputTag("mlflow.data.context", context)])
        for attempt in range(5):  # a parallel job may insert the same dataset at once: then it is there
            try:
                return self._retry(self.client.log_inputs, self.run_id, [entry])
            except Exception:  # noqa: BLE001
                if attempt == 4:
                    raise
                time.sleep(0.1 * (attempt + 1))

    def log_frame(self, frame, artifact_path: str, name: str) -> None:
        """A polars frame as a Parquet artifact."""
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            frame.write_parquet(Path(d) / name)
            self.log_artifacts(Path(d) / name, artifact_path)

    def log_csv(self, frame, artifact_path: str, name: str) -> None:
        """A polars frame of plain columns as a CSV artifact (the UI shows it; it cannot show Parquet)."""
        import tempfile

        import polars as pl

        lists = [c for c, t in frame.schema.items() if isinstance(t, pl.List)]
        frame = frame.with_columns(pl.col(c).list.join(" ") for c in lists)
        with tempfile.TemporaryDirectory() as d:
            frame.write_csv(Path(d) / name)
            self.log_artifacts(Path(d) / name, artifact_path)

    def log_json(self, obj, artifact_path: str, name: str) -> None:
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            (Path(d) / name).write_text(json.dumps(obj, indent=1))
            self.log_artifacts(Path(d) / name, artifact_path)

    def log_params(self, params: dict[str, str]) -> None:
        """Log params the run lacks. MLflow keeps a param's first value, so a resumed run whose settings differ says
        so: a tag `resumed.<key>` per changed setting ("new (was old)") and a warning naming them."""
        from mlflow.entities import Param

        from sleepy import console

        existing = self._retry(self.client.get_run, self.run_id).data.params
        items = [Param(k, scrub(v, self.secrets)) for k, v in params.items() if k not in existing]
        changed = {k: (existing[k], scrub(v, self.secrets)) for k, v in params.items()
                   if k in existing and k not in _RESUME_KEYS and existing[k] != scrub(v, self.secrets)}
        if changed:
            self.set_tags({f"resumed.{k}": f"{new} (was {old})" for k, (old, new) in changed.items()})
            console.warn(f"run {self.run_id} resumed with settings its params do not show (MLflow keeps the first): "
                         + ", ".join(f"{k}={new} (was {old})" for k, (old, new) in sorted(changed.items()))
                         + "; recorded as resumed.* tags")
        for i in range(0, len(items), 100):
            self._retry(self.client.log_batch, self.run_id, params=items[i:i + 100])

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, scrub(str(v), self.secrets)[:5000]) for k, v in tags.items()]
        self._retry(self.client.log_batch, self.run_id, tags=items)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(items), 500):
            self._retry(self.client.log_batch, self.run_id, metrics=items[i:i + 500])

    def history(self, key: str) -> dict[int, float]:
        """A metric of this run by step (the last value logged at each)."""
        return {m.step: m.value for m in self._retry(self.client.get_metric_history, self.run_id, key)}

    @contextlib.contextmanager
    def stream(self, key: str, offset: int = 0, every_s: float = 10.0):
        """A function (step, value) that logs `key` at step offset + step, in batches every `every_s` seconds and
        when the block ends, so a long night's loss curve grows in the UI as it trains."""
        from mlflow.entities import Metric

        pending: list = []
        last = time.monotonic()

        def flush():
            nonlocal last
            for i in range(0, len(pending), 500):
                self._retry(self.client.log_batch, self.run_id, metrics=pending[i:i + 500])
            pending.clear()
            last = time.monotonic()

        def log(step: int, value: float) -> None:
            pending.append(Metric(key, float(value), int(time.time() * 1000), offset + step))
            if time.monotonic() - last >= every_s:
                flush()

        try:
            yield log
        finally:
            flush()

    def log_artifacts(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self._retry(self.client.log_artifacts, self.run_id, str(path), artifact_path)
        elif path.exists():
            self._retry(self.client.log_artifact, self.run_id, str(path), artifact_path)

    def end(self, status: str = "FINISHED") -> None:
        """End the run; the last job of a sweep to end ends the parent run: FAILED if a job failed, KILLED if one was
        killed, else FINISHED."""
        if not self.run_id:
            return
        if self._monitor is not None:
            self._monitor.finish()  # its last samples logged while the run is still RUNNING
            self._monitor = None
        with self._sweep_lock():
            self._retry(self.client.set_terminated, self.run_id, status=status)
            if self.parent_id:
                self._settle_parent()

    def _settle_parent(self) -> None:
        children = self._retry(self.client.search_runs, [self.experiment_id],
                               f"tags.`mlflow.parentRunId` = '{self.parent_id}'", max_results=10000)
        statuses = {run.info.status for run in children}
        if statuses & {"RUNNING", "SCHEDULED"}:
            return
        status = "FAILED" if "FAILED" in statuses else "KILLED" if "KILLED" in statuses else "FINISHED"
        self._retry(self.client.set_terminated, self.parent_id, status=status)


def _store_lock(uri: str):
    if not uri.startswith("sqlite:///"):
        return contextlib.nullcontext()
    db = Path(uri.removeprefix("sqlite:///"))
    return _file_lock(db.with_name(db.name + ".lock"))


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive lock across processes (flock on `path`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
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
