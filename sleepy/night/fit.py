"""One night's training, a plain LoRA or subspace tasks, into one standard peft LoRA directory.

    subspace=none:  all examples -> LoRA (fresh, or the last adapter continued) -> the adapter
    share | uwsh:   per task (the night, or each koan family under route=family):
                      coefficients (+ phi temporary directions) on the bases -> effective factors
                      -> share: merge (re-SVD, re-project every task) | uwsh: project on the fixed basis
                    share's first task has no basis yet: it trains a plain LoRA that seeds it;
                    uwsh's basis comes once from the adapters under subspace.source
                    -> served: what the night trained. route=mean: the night's one task as trained;
                       route=family: each family's task as trained under routes/<family>/ (families not trained
                       tonight keep the last night's), and as the default their exact mean update
                       (adapters.merge_updates); the subspace (bases, coefficients) under subspace/
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class NightFit:
    steps: int
    tokens: int
    seconds: float
    loss_first: float
    loss_last: float
    trainable_params: int  # what one task trains (the last one)
    lora_params: int  # what a plain rank-r LoRA on the same modules trains
    tasks: list[str]
    basis_columns: float = math.nan  # mean basis columns per module and side
    kept: float = math.nan  # mean share of the adapters' centred variance the bases keep
    sources: list[Path] = field(default_factory=list)  # uwsh: the adapters the basis was extracted from

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def as_mlflow(self) -> dict[str, float]:
        out = {"night/steps": self.steps, "night/loss_first": self.loss_first, "night/loss_last": self.loss_last,
               "night/trainable_params": self.trainable_params, "night/trainable_params_lora_equivalent": self.lora_params,
               "night/tokens_per_s": self.tokens_per_s, "night/seconds": self.seconds, "night/tasks": len(self.tasks)}
        if not math.isnan(self.basis_columns):
            out |= {"night/subspace_k": self.basis_columns, "night/subspace_kept": self.kept}
        if self.sources:
            out["night/subspace_sources"] = len(self.sources)
        return {k: float(v) for k, v in out.items()}


def night_tasks(examples: list, cycle: int, family_of: dict[str, str] | None = None) -> dict[str, list]:
    """The night's tasks: one, named for the night; or, given each koan's family (subspace.route=family), one per
    family."""
    if family_of is None:
        return {f"night{cycle}": examples}
    tasks: dict[str, list] = {}
    for x in examples:
        tasks.setdefault(family_of[x.koan_id], []).append(x)
    return dict(sorted(tasks.items()))


def fit_night(path: str, groups: dict[str, list], out: Path, *, lora, night, subspace, device: str = "auto",
              dtype: str = "auto", seed: int = 0, previous: Path | None = None,
              sources: Callable[[], list[Path]] | None = None,
              on_step: Callable[[int, float], None] | None = None) -> NightFit:
    """Train on `groups` (task name -> examples) and write the adapter to `out`. `previous`: the last night's
    adapter directory (its adapter to continue, its subspace to extend); `sources`: finds uwsh's adapters, called
    only when there is no saved subspace to continue; `on_step(step, loss)`: after every optimizer step, counted
    over the night's tasks."""
    from sleepy.night.dataset import encode
    from sleepy.night.trainer import load_base, resolve_trainer, train, wrap_lora

    trainer = resolve_trainer(night.trainer) if subspace.method == "none" else "peft"  # coefficients: peft's forward
    model, tokenizer = load_base(path, device, dtype, trainer, night.max_length)
    encoded = {name: [e for e in (encode(tokenizer, x, night.max_length) for x in examples) if e]
               for name, examples in groups.items()}
    encoded = {name: e for name, e in encoded.items() if e}
    if not encoded:
        raise ValueError(f"every night example is longer than night.max_length={night.max_length} tokens")

    done = 0  # steps of the night's earlier tasks

    def fit(peft, examples, task_seed):
        nonlocal done
        offset = done
        r = train(peft, tokenizer, examples, steps=night.steps, lr=night.lr, batch_size=night.batch_size,
                  seed=task_seed, on_step=(lambda step, loss: on_step(offset + step, loss)) if on_step else None)
        done += r.steps
        return r

    if subspace.method == "none":
        init = str(previous) if lora.mode == "continue" and previous else None
        peft = wrap_lora(model, lora, init, trainer, seed)
        examples = [e for group in encoded.values() for e in group]
        r = fit(peft, examples, seed)
        peft.save_pretrained(str(out))
        return NightFit(r.steps, r.tokens, r.seconds, r.loss_first, r.loss_last, r.trainable_params,
                        r.trainable_params, list(encoded))
    return _fit_subspace(model, path, encoded, out, fit, lora=lora, subspace=subspace, seed=seed,
                         previous=previous, sources=sources)


def _fit_subspace(model, path, encoded, out, fit, *, lora, subspace, seed, previous, sources) -> NightFit:
    import torch

    from sleepy.night.coefficients import attach, factors, fresh, shapes
    from sleepy.night.subspace import Subspace
    from sleepy.night.trainer import wrap_lora

    if subspace.method == "uwsh" and subspace.phi > 0:
        raise ValueError("subspace.phi must be 0 with uwsh: its fixed basis would project the temporary directions away")
    k, ev = subspace.k, subspace.explained_variance
    peft = wrap_lora(model, lora, None, "peft", seed)
    saved = previous / "subspace" if previous else None
    sub, used = None, []
    if saved and saved.exists():
        sub = Subspace.load(saved)
    elif subspace.method == "uwsh":
        used, adapters = _fitting(sources() if sources else [], shapes(peft), subspace.source)
        sub = Subspace.fit(adapters, "uwsh", k, ev)
    results, trained, generator = [], {}, torch.Generator().manual_seed(seed)
    trainable = lora_equivalent = sum(p.numel() for p in peft.parameters() if p.requires_grad)
    for i, (name, examples) in enumerate(encoded.items()):
        if sub is not None:  # else share's first task: a plain LoRA seeds the basis
            init = sub.task(name) if lora.mode == "continue" else None
            if init is None and lora.mode == "continue" and sub.tasks:
                init = sub.tasks[-1]
            trainable = attach(peft, sub, init or fresh(sub, lora.r, generator), subspace.phi, seed + i)
            lora_equivalent = sub.lora_params(lora.r)
        results.append(fit(peft, examples, seed * 1000 + i))
        trained[name] = factors(peft)
        if sub is None:
            sub = Subspace("share", k, ev)
        sub.add_task(trained[name], name)

    config = {"lora_alpha": lora.alpha, "lora_dropout": lora.dropout, "base_model_name_or_path": path, "r": lora.r}
    _export(out, trained, config, family=subspace.route == "family", previous=previous)
    sub.save(out / "subspace")
    columns = [b.shape[1] for pair in sub.bases.values() for b in pair]
    kept = [v for pair in sub.kept.values() for v in pair]
    return NightFit(sum(r.steps for r in results), sum(r.tokens for r in results), sum(r.seconds for r in results),
                    sum(r.loss_first for r in results) / len(results), sum(r.loss_last for r in results) / len(results),
                    trainable, lora_equivalent, list(sub.names), sum(columns) / len(columns), sum(kept) / len(kept),
                    used)


def _export(out: Path, trained: dict, config: dict, family: bool, previous: Path | None) -> None:
    """Serve what the night trained: its one task's factors, or under family routing each family's (the last night's
    for families not trained tonight) and, for koans of no known family, their exact mean update."""
    from sleepy.lora import read_adapter, write_adapter
    from sleepy.night.adapters import merge_updates

    if not family:
        (factors,) = trained.values()
        write_adapter(out, factors, config)
        return
    routes = {p.name: read_adapter(p) for p in sorted((previous / "routes").iterdir())} \
        if previous and (previous / "routes").is_dir() else {}
    routes.update({name: (factors, config) for name, factors in trained.items()})
    write_adapter(out, *merge_updates([routes[name] for name in sorted(routes)]))  # first: it replaces the directory
    for name, (factors, route_config) in routes.items():
        write_adapter(out / "routes" / name, factors, route_config)


def _fitting(sources: list[Path], model_shapes: dict, source: str | None) -> tuple[list[Path], list]:
    """The source adapters that fit the model's LoRA layers (any rank), and their factors."""
    from sleepy.lora import read_adapter

    paths, out = [], []
    for path in sources:
        factors, _ = read_adapter(path)
        if set(factors) == set(model_shapes) and all(
                A.shape[1] == model_shapes[m][0][1] and B.shape[0] == model_shapes[m][1][0]
                for m, (A, B) in factors.items()):
            paths.append(path)
            out.append(factors)
    if not out:
        raise ValueError(f"subspace.source={source}: none of its {len(sources)} peft adapters fits this model's LoRA "
                         "layers (same base model and lora.target_modules); uwsh extracts its basis from them")
    return paths, out
