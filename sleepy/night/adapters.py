"""Adapters: where a run's nights keep theirs, finding adapters to build on, and merging them.

    <adapters_dir>/<run id>/cycle<N>/            night N's adapter (what the next day and eval N are served)
                            cycle<N>/DONE         written last: the night finished (episodes version, tasks)
                            cycle<N>/examples.jsonl   what it trained on
                            cycle<N>/routes/<family>/ subspace.route=family: each family's adapter
                            cycle<N>/subspace/    subspace bases and task coefficients
                            cycle<N>.partial/     a night in progress: renamed to cycle<N> when done

The directories themselves are standard peft LoRA directories (sleepy/lora.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from sleepy.lora import CONFIG, WEIGHTS, Factors


def find_adapters(root: str | Path, exclude: str | Path | None = None) -> list[Path]:
    """Every peft LoRA directory under `root` (sorted), leaving out those under `exclude` and unfinished ones."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"subspace.source: {root} is not a directory")
    skip = Path(exclude).resolve() if exclude else None
    found = []
    for config in sorted(root.rglob(CONFIG)):
        path = config.parent
        unfinished = any(part.startswith(".") or part.endswith(".partial") for part in path.relative_to(root).parts)
        if unfinished or not (path / WEIGHTS).exists() or (skip and path.resolve().is_relative_to(skip)):
            continue
        found.append(path)
    return found


def origin(path: str | Path) -> dict:
    """Where an adapter directory comes from, by the layout above: its path, the MLflow run that trained it and the
    night (None for either when the path does not follow the layout)."""
    path = Path(path).resolve()
    for night in (path, *path.parents):
        if night.name.startswith("cycle") and night.name[5:].isdigit():
            return {"path": str(path), "run_id": night.parent.name, "cycle": int(night.name[5:])}
    return {"path": str(path), "run_id": None, "cycle": None}


def merge_updates(adapters: list[tuple[Factors, dict]]) -> tuple[Factors, dict]:
    """One LoRA whose update is exactly the mean of the adapters' updates (delta W), from (factors, config) pairs:
    their factors side by side, each B scaled by its alpha / r and 1 / n, at rank sum(r) with alpha = rank. Exact,
    where averaging factors or coefficients is not (LoRA factors are defined only up to an r x r transform)."""
    import torch

    modules = sorted(adapters[0][0])
    merged = {}
    for name in modules:
        A = torch.cat([f[name][0] for f, _ in adapters], dim=0)
        B = torch.cat([f[name][1] * (c["lora_alpha"] / f[name][0].shape[0]) / len(adapters) for f, c in adapters], dim=1)
        merged[name] = (A, B)
    rank = A.shape[0]
    return merged, {**adapters[0][1], "r": rank, "lora_alpha": rank}


class RunAdapters:
    """The adapters a run's nights trained, under <adapters_dir>/<run id>: a pure view of the directory (loading
    them into a backend is the job's)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def dir(self, cycle: int) -> Path:
        return self.root / f"cycle{cycle}"

    def done(self, cycle: int) -> bool:
        return (self.dir(cycle) / "DONE").exists()

    def latest(self, cycle: int) -> int | None:
        """The newest night up to `cycle` that finished an adapter; None: the base model."""
        return next((c for c in range(cycle, 0, -1) if self.done(c)), None)

    def routes(self, cycle: int) -> dict[str, Path]:
        """subspace.route=family: family -> the directory of night `cycle`'s adapter for it."""
        routes = self.dir(cycle) / "routes"
        return {p.name: p for p in sorted(routes.iterdir()) if p.is_dir()} if routes.is_dir() else {}

    def examples(self, before: int) -> list:
        """The examples every finished night before `before` trained on."""
        from sleepy.night.dataset import Example

        out = []
        for c in range(1, before):
            path = self.dir(c) / "examples.jsonl"
            if self.done(c) and path.exists():
                for line in path.read_text(encoding="utf-8").splitlines():
                    d = json.loads(line)
                    out.append(Example(d["koan_id"], d["source"], tuple(d["messages"]), d["response"]))
        return out

    def learned(self, cycle: int) -> set[str]:
        """The koans night `cycle` learned: its new examples' koans (replayed successes are not new)."""
        path = self.dir(cycle) / "examples.jsonl"
        if not self.done(cycle) or not path.exists():
            return set()
        rows = (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines())
        return {d["koan_id"] for d in rows if d["source"] != "replay"}

    def partial(self, cycle: int) -> Path:
        """A fresh directory for night `cycle` to write its adapter into (what a killed night left is dropped)."""
        path = self.dir(cycle).with_name(f"cycle{cycle}.partial")
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def commit(self, cycle: int, examples: list, record: dict) -> Path:
        """Finish night `cycle`: its examples and DONE (`record`) into the partial directory, then one rename."""
        tmp, out = self.dir(cycle).with_name(f"cycle{cycle}.partial"), self.dir(cycle)
        with open(tmp / "examples.jsonl", "w", encoding="utf-8") as f:
            for x in examples:
                f.write(json.dumps({"koan_id": x.koan_id, "source": x.source, "messages": list(x.messages),
                                    "response": x.response}) + "\n")
        (tmp / "DONE").write_text(json.dumps({"cycle": cycle, **record}))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
        return out


def uwsh_sources(cfg, mine: Path | None = None) -> list[Path]:
    """The peft adapters uwsh extracts its fixed basis from: none of this run's (under `mine`, or run_id's)."""
    source = cfg.subspace.source or cfg.adapters_dir
    mine = mine or (Path(cfg.adapters_dir) / cfg.run_id if cfg.run_id else None)
    found = find_adapters(source, exclude=mine) if Path(source).is_dir() or cfg.subspace.source else []
    if not found:
        raise ValueError(f"subspace.source={source}: no peft LoRA adapter there to extract the uwsh basis from "
                         "(run +experiment=lora first, or point subspace.source at a directory of adapters)")
    return found
