"""Night c's adapter: fitted on the night's examples in a partial directory, then kept (its examples, DONE), logged
to the run and served from the next stage on."""

from __future__ import annotations


def train_adapter(job, cycle: int, examples: list, earlier: list, previous: int | None):
    """Fit night `cycle`'s adapter (on `earlier` nights' examples too, with lora.mode=new; from night `previous`'s
    adapter with lora.mode=continue), finish, log and serve it; the fit's statistics."""
    from sleepy import console
    from sleepy.night.adapters import origin, uwsh_sources
    from sleepy.night.fit import fit_night, night_tasks

    cfg = job.cfg
    family_of = {k.id: k.family for k in job.pack.koans} if cfg.subspace.method != "none" and \
        cfg.subspace.route == "family" else None
    steps_before = int(sum(v for c, v in job.tracker.history("night/steps").items() if c < cycle))
    tasks = night_tasks([*earlier, *examples], cycle, family_of)
    progress = console.night_steps(cycle, cfg.night.steps * (len(tasks) if cfg.subspace.method != "none" else 1))
    with job.tracker.stream("night/loss", offset=steps_before) as log_loss:  # step = the run's training step

        def on_step(step: int, loss: float) -> None:
            log_loss(step, loss)
            progress(step, loss)

        fit = fit_night(job.backend.path, tasks,
                        job.adapters.partial(cycle), lora=cfg.lora, night=cfg.night, subspace=cfg.subspace,
                        device=cfg.model.device, dtype=cfg.model.dtype, seed=int(cfg.seed) * 1000 + cycle,
                        previous=job.adapters.dir(previous) if previous else None,
                        sources=lambda: uwsh_sources(cfg, job.adapters.root), on_step=on_step)
    out = job.adapters.commit(cycle, examples, {"episodes_version": job.store.version(), "tasks": fit.tasks})
    job.tracker.log_artifacts(out, f"adapters/cycle{cycle}")
    if fit.sources:  # uwsh's basis: which adapters, of which runs
        job.tracker.log_json([origin(p) for p in fit.sources], f"adapters/cycle{cycle}", "uwsh_sources.json")
    job.load_adapter(cycle)
    return fit
