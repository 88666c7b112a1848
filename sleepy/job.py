"""One run's context: the koans, the sandbox, the MLflow run, the episode store, the model (loaded when first
asked for), the run's adapters, and the checks that refuse a run before any of it starts.

    with Job(cfg) as job:   preflight(): stores writable, a koan's own solution passes the sandbox, night settings;
                            then the MLflow run: new, or `run_id`'s resumed; a SIGTERM ends it as KILLED
        ...                 the stages of sleepy/experiment.py
                            on leaving: status FINISHED | FAILED | KILLED, the model freed, SIGTERM's handler back

Everything a stage reads of earlier cycles comes from `job.history` (sleepy/history.py): this run's own episodes,
or the run `baseline_run_id` names (with the same koans), never a run nobody named.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

STAGE_SPLIT = {"day": "train", "eval": "eval", "recall": "train"}


class Job:
    """One Hydra job = one MLflow run."""

    def __init__(self, cfg):
        from omegaconf import OmegaConf

        from sleepy.config import AgentConfig
        from sleepy.koans.registry import load_configured
        from sleepy.sandbox import Sandbox

        self.cfg = cfg
        self.settings = AgentConfig(**OmegaConf.to_container(cfg.agent))
        self.sandbox = Sandbox.from_config(cfg.sandbox)
        self.pack = load_configured(cfg.koans, self.sandbox)
        self.eval_ids = {k.id for k in self.pack.koans if k.split == "eval"}
        self._backend = self._teacher = None
        self.lock = None

    def __enter__(self) -> Job:
        from omegaconf import OmegaConf

        from sleepy.episodes import EpisodeStore
        from sleepy.history import History
        from sleepy.night.adapters import RunAdapters
        from sleepy.runlock import RunLock
        from sleepy.stores import store_errors
        from sleepy.tracking import Tracker, run_name

        cfg = self.cfg
        preflight(cfg, self.sandbox, self.koans("eval" if cfg.stage == "eval" else "day"))
        self.store = EpisodeStore(cfg.episodes.uri)
        self.store.check()
        if cfg.baseline_run_id and self.store.frame(run_id=cfg.baseline_run_id).is_empty():
            raise ValueError(f"baseline_run_id={cfg.baseline_run_id}: the episode store {cfg.episodes.uri} holds no "
                             "episode of that run")
        if cfg.run_id:  # a resume: no second job on this run (a new run's id is its own)
            self.lock = RunLock(cfg.episodes.uri, cfg.run_id).acquire()
        with store_errors("MLflow", cfg.tracking.uri, "opened"):
            self.tracker = Tracker(cfg.tracking.uri, cfg.experiment_name, cfg.tracking.artifact_root,
                                   system_metrics_s=cfg.tracking.system_metrics_s)
            self.run_id = self.tracker.start(cfg.run_id, run_name=run_name(cfg))
        self.status = "FAILED"
        self._sigterm = signal.signal(signal.SIGTERM, _terminate)
        self.tracker.log_config(OmegaConf.to_container(cfg, resolve=True))
        self.tracker.set_tags({"isolation": self.sandbox.isolation, "sleepy.baseline_run_id": cfg.baseline_run_id or "",
                               "sleepy.memory.source": cfg.memory.source or ""})
        self.adapters = RunAdapters(Path(cfg.adapters_dir) / self.run_id)
        self.history = History(self.store, self.run_id, cfg.baseline_run_id, self.koans, self.settings.max_attempts)
        return self

    def __exit__(self, kind, exc, tb):
        if kind is None:
            self.status = "FINISHED"
        elif issubclass(kind, KeyboardInterrupt):
            self.status = "KILLED"
        try:
            if self._backend is not None:
                self._backend.close()
            self.tracker.end(self.status)
        finally:
            signal.signal(signal.SIGTERM, self._sigterm)
            if self.lock is not None:
                self.lock.release()
        if self.status == "KILLED":
            print(f"sleepy: run {self.run_id} stopped ({exc or 'interrupted'}) and marked KILLED; what it finished is "
                  f"kept: resume it with run_id={self.run_id}", file=sys.stderr)
        return False

    def check_night(self) -> None:
        """A night needs a backend that serves adapters and local base weights to train on."""
        if not self.cfg.night.enabled:
            return
        if not self.backend.serves_adapters:
            raise ValueError(f"model '{self.cfg.model.name}' ({self.cfg.model.provider or self.cfg.model.backend}) "
                             "cannot serve adapters: a night stage needs model=tiny, an hf model, a llamacpp model or vllm "
                             "(or night.enabled=false)")
        if not self.backend.path:
            raise ValueError("a night trains on local base weights: set model.path to them")

    # -- what the stages use --------------------------------------------------------------------------------------
    @property
    def backend(self):
        """The model, loaded on first use."""
        if self._backend is None:
            from sleepy.models import make_backend

            self._backend = make_backend(self.cfg.model, seed=int(self.cfg.seed), max_tokens=self.cfg.agent.max_tokens)
        return self._backend

    def teacher(self):
        """The served model of `teacher` targets, or None."""
        t = self.cfg.night.teacher
        if self._teacher is None and t.provider:
            from sleepy.models.litellm_backend import LiteLLMBackend

            self._teacher = LiteLLMBackend(t.name, t.provider, t.api_base, t.api_key)
            self._teacher.check()
        return self._teacher

    def koans(self, stage: str):
        """The koans a stage attempts: the `koans` group's selection of the stage's split."""
        k = self.cfg.koans
        koans = self.pack.select(family=k.families, split=STAGE_SPLIT[stage], count=k.count)
        if not koans:
            raise ValueError(f"no {STAGE_SPLIT[stage]} koans selected (koans.families={k.families}, koans.count={k.count})")
        return koans

    def load_adapter(self, night: int | None) -> str | None:
        """Serve night `night`'s adapter (and its family routes): loaded into the backend once; its name, or None for
        the base model."""
        if night is None:
            return None
        name = f"cycle{night}"
        if name not in self.backend.adapters:
            self.backend.load_adapter(name, self.adapters.dir(night))
        for family, path in self.adapters.routes(night).items():
            if f"{name}-{family}" not in self.backend.adapters:
                self.backend.load_adapter(f"{name}-{family}", path)
        return name

    def router(self, night: int | None):
        """subspace.route=family: each koan to its family's adapter of night `night` (loaded by load_adapter)."""
        routes = self.adapters.routes(night) if night is not None else {}
        if not routes:
            return None
        from sleepy.routing import FamilyRouter, family_by_code

        adapters = {family: f"cycle{night}-{family}" for family in routes}
        return FamilyRouter(family_by_code(k for k in self.pack.koans if k.split == "train"), adapters, f"cycle{night}")

    def memory(self, stage: str, cycle: int):
        """The memory strategy's recall of this run's days before this stage (the day itself excluded), or None."""
        if self.settings.prompt != "memory":
            return None
        from sleepy.memory import Memory

        before = cycle if stage == "day" else cycle + 1
        return Memory(self.store, self.run_id, before, self.cfg.memory.k, self.cfg.memory.source)

    def finish_stage(self, stage: str, cycle: int, skipped: int, adapter: str | None) -> dict[str, float]:
        """The stage's metrics at `cycle`, against the cycle before and the stage's first cycle as this run's history
        has them (its own, else the named baseline run's, else absent), logged at step = cycle with its episodes
        (Parquet, and a per-koan CSV the MLflow UI shows) and printed; a warning when some model calls failed."""
        from sleepy import console
        from sleepy.metrics import koan_outcomes, stage_metrics

        h, t = self.history, self.tracker
        episodes = h.episodes(stage, cycle)
        metrics, table = stage_metrics(stage, episodes, h.earlier(stage, cycle - 1) if cycle > 0 else None,
                                       h.baseline(stage, cycle), max_attempts=self.settings.max_attempts,
                                       samples=self.settings.samples,
                                       expected={k.id: k.expected_errors for k in self.pack.koans})
        t.log_metrics(metrics, step=cycle)
        t.set_tags({f"episodes.version.{stage}.{cycle}": str(self.store.version())})
        t.log_frame(episodes, "episodes", f"episodes_{stage}_{cycle}.parquet")
        t.log_csv(koan_outcomes(episodes, self.settings.max_attempts), "episodes", f"summary_{stage}_{cycle}.csv")
        console.print_summary(table, stage, cycle, self.run_id, skipped=skipped, adapter=adapter,
                              attempts=episodes.height, model_errors=int(metrics.get(f"{stage}/model_errors", 0)))
        if metrics.get(f"{stage}/model_errors"):  # not enough to stop the stage: say so, tag the first
            first = episodes.filter(episodes["reason"] == "model_error")["signature"][0].removeprefix("model_error: ")
            t.set_tags({f"{stage}.{cycle}.first_model_error": first[:500]})
            console.warn(f"{stage} cycle {cycle}: {int(metrics[f'{stage}/model_errors'])} model calls failed (first: "
                         f"{first[:200]}); their koans are attempted again when the run is resumed with "
                         f"run_id={self.run_id}")
        return metrics


def preflight(cfg, sandbox, koans) -> None:
    """Refuse, before a run exists or a model is called: a store that cannot be written, sandbox settings under which
    a koan's own solution fails, night settings that cannot work."""
    from sleepy.tracking import local_dirs

    writable(Path(cfg.episodes.uri), "episodes.uri")
    for path in local_dirs(cfg.tracking.uri, cfg.tracking.artifact_root):
        writable(path, "tracking.uri" if path.name != "artifacts" else "tracking.artifact_root")
    check_sandbox(cfg.sandbox, sandbox, next(k for k in koans if not k.clippy))
    if cfg.stage == "cycle" and cfg.night.enabled:
        writable(Path(cfg.adapters_dir), "adapters_dir")
        check_trainer(cfg)


def check_sandbox(s, sandbox, koan) -> None:
    """The koan's own solution must pass under the sandbox settings `s`, or every attempt would fail for the
    sandbox's sake (limits too small, an edition the koans are not written for)."""
    verdict = sandbox.judge_program(koan.program(koan.solution))
    if not verdict.passed:  # judged again, afresh: a failure cached from a flaky judgement must not stop every job
        verdict = type(sandbox).from_config(s, use_cache=False).judge_program(koan.program(koan.solution))
    if not verdict.passed:
        raise ValueError(f"sandbox pre-flight: the solution of koan {koan.id} does not pass ({verdict.reason}: "
                         f"{(verdict.signature or verdict.output.strip())[:160]}) with sandbox.edition={s.edition} and "
                         f"sandbox.limits {dict(s.limits)}; raise the limits or fix the edition")


def check_trainer(cfg) -> None:
    """The night's trainer can be loaded, and uwsh has adapters to extract its basis from."""
    from sleepy.night.trainer import import_unsloth, resolve_trainer

    if cfg.subspace.method == "uwsh":
        from sleepy.night.adapters import uwsh_sources

        uwsh_sources(cfg)
    elif cfg.subspace.method == "none" and resolve_trainer(cfg.night.trainer) == "unsloth":
        import_unsloth()  # before the backend brings transformers and peft in


def writable(path: Path, key: str) -> None:
    """Refuse, in one line naming the key, a directory that cannot be created or written."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".sleepy-write-check-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"{key}: cannot write to {path} ({e.strerror or e}); point {key} at a writable directory") \
            from None


class Terminated(KeyboardInterrupt):
    """A signal (SIGTERM) stops the job: it unwinds like Ctrl-C, so the run ends KILLED with what it finished kept."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum


def _terminate(signum, frame):
    raise Terminated(signum)
