"""LoRA subspaces: many task adapters kept as coefficients on shared low-rank bases (Share and UWSH).

A LoRA adapter of a linear module W (d_out x d_in) is (A (r x d_in), B (d_out x r)), delta W = (alpha / r) B A.
Per module and side a basis (d x k) holds the mean column of the stacked factors of several adapters and the
principal directions around it; a task is its coefficients eps_alpha, eps_beta (each k x r), with
A = (basis_A eps_alpha)^T and B = basis_B eps_beta.

- share (arXiv 2602.06043): the bases follow the tasks; each new task is merged by reconstructing every task,
  rebuilding the bases from all of them and re-projecting every task's coefficients.
- uwsh (arXiv 2512.05117): the bases are extracted once from a collection of adapters and stay fixed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from sleepy.lora import Factors, staged_dir

if TYPE_CHECKING:
    from torch import Tensor

# module name -> (eps_alpha (k_A x r), eps_beta (k_B x r))
Coefficients = dict[str, tuple["Tensor", "Tensor"]]

METHODS = ("share", "uwsh")
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TENSORS = "subspace.safetensors"
META = "subspace.json"


def check_rule(k: int | None, explained_variance: float | None, prefix: str = "") -> None:
    """The basis size rule: exactly one of a fixed k (>= 1) and an explained variance (in (0, 1]). `prefix` names
    the keys as the caller knows them (the config's "subspace.")."""
    if (k is None) == (explained_variance is None):
        raise ValueError(f"give exactly one of {prefix}k and {prefix}explained_variance (got {prefix}k={k}, "
                         f"{prefix}explained_variance={explained_variance}); e.g. {prefix}k=null "
                         f"{prefix}explained_variance=0.9")
    if k is not None and k < 1:
        raise ValueError(f"{prefix}k must be >= 1, got {k}")
    if explained_variance is not None and not 0 < explained_variance <= 1:
        raise ValueError(f"{prefix}explained_variance must be in (0, 1], got {explained_variance}")


def build_basis(
    M: Tensor, k: int | None = None, explained_variance: float | None = None, span: Tensor | None = None
) -> tuple[Tensor, float]:
    """Orthonormal basis (d x k) for the columns of M (d x n), and the fraction of their centred variance it keeps.

    Column 0 is the mean column (left out when it is ~0); the rest are the principal directions of the centred
    columns once the mean direction is taken out. k is either fixed or the smallest that keeps
    `explained_variance` of the centred variance; never more than the rank of M. `span`, an orthonormal
    d x s basis known to contain every column of M, makes it an s x n problem with the same result.
    """
    import torch

    check_rule(k, explained_variance)
    tol = torch.finfo(torch.float32).eps * max(M.shape)
    M = M.to(torch.float32)
    if span is not None:
        M = span.T @ M
    d, n = M.shape
    m = M.mean(dim=1)
    C = M - m[:, None]
    mean_size = float(m.norm()) * n**0.5  # |m 1^T|_F: how much of M the mean column accounts for
    if mean_size > tol * float(M.norm()):
        mean_dir = (m / m.norm())[:, None]
        along = mean_dir.T @ C
        # With the mean direction in the basis, the principal directions of what it leaves are the best remaining
        # ones (Eckart-Young), and orthogonal to it by construction.
        rest = C - mean_dir @ along
    else:
        mean_dir, along, rest = M.new_zeros(d, 0), M.new_zeros(0, n), C
    U, S, _ = torch.linalg.svd(rest, full_matrices=False)
    scale = max(mean_size, float(S[0]) if len(S) else 0.0)
    rank = int((S > tol * scale).sum())
    # kept[j]: centred variance kept by the mean direction and the first j principal directions
    variances = S.double().square()
    kept = along.double().square().sum() + torch.cat([variances.new_zeros(1), variances[:rank].cumsum(0)])
    total = kept[0] + variances.sum()
    kept = kept / total if total > 0 else torch.ones_like(kept)
    if k is not None:
        j = min(k - mean_dir.shape[1], rank)
    else:
        j = min(int((kept < explained_variance).sum()), rank)
    basis = torch.cat([mean_dir, U[:, :j]], dim=1)
    if span is not None:
        basis = span @ basis
    return basis.contiguous(), float(kept[j])


def _share_params(d_in: int, d_out: int, k_A: int, k_B: int, r: int, phi: int) -> int:
    """Trainable parameters of one module under Share: the coefficients of both sides, plus phi temporary
    directions per side (their basis columns and coefficient rows), as many as fit beside the basis."""
    phi_A, phi_B = temporary_count(phi, d_in, k_A), temporary_count(phi, d_out, k_B)
    return (k_A + k_B) * r + phi_A * d_in + phi_B * d_out + (phi_A + phi_B) * r


def temporary_count(phi: int, d: int, k: int) -> int:
    """Temporary directions a side gets: phi, but no more than the dimensions its k-column basis leaves free."""
    return max(0, min(phi, d - k))


class Subspace:
    """Per-module bases and per-task coefficients of a set of LoRA adapters.

    bases[module] = (basis_B (d_out x k), basis_A (d_in x k)); tasks[i][module] = (eps_alpha, eps_beta), the task
    named names[i]; kept[module] = fraction of the centred variance each basis kept (B side, A side), for logging.
    """

    def __init__(self, method: str, k: int | None = None, explained_variance: float | None = None):
        if method not in METHODS:
            raise ValueError(f"unknown subspace method {method!r}; expected one of {METHODS}")
        check_rule(k, explained_variance)
        self.method = method
        self.k = k
        self.explained_variance = explained_variance
        self.bases: dict[str, tuple[Tensor, Tensor]] = {}
        self.tasks: list[Coefficients] = []
        self.names: list[str] = []
        self.kept: dict[str, tuple[float, float]] = {}

    @classmethod
    def fit(
        cls, adapters: list[Factors], method: str, k: int | None = None, explained_variance: float | None = None
    ) -> Subspace:
        """Bases from all `adapters`. Share: each adapter becomes a task. UWSH: they only define the fixed basis."""
        sub = cls(method, k, explained_variance)
        sub._set_bases(adapters)
        if method == "share":
            sub.tasks = [sub.project(a) for a in adapters]
            sub.names = [f"task{i}" for i in range(len(adapters))]
        return sub

    def _set_bases(self, adapters: list[Factors], spans: dict[str, tuple[Tensor, Tensor]] | None = None) -> None:
        import torch

        if not adapters:
            raise ValueError("no adapters to build a subspace from")
        modules = sorted(adapters[0])
        for adapter in adapters:
            _check_modules(adapter, modules)
        bases, kept = {}, {}
        for name in modules:
            span_B, span_A = spans[name] if spans else (None, None)
            M_B = torch.cat([a[name][1] for a in adapters], dim=1)
            M_A = torch.cat([a[name][0].T for a in adapters], dim=1)
            basis_B, kept_B = build_basis(M_B, self.k, self.explained_variance, span_B)
            basis_A, kept_A = build_basis(M_A, self.k, self.explained_variance, span_A)
            bases[name], kept[name] = (basis_B, basis_A), (kept_B, kept_A)
        self.bases, self.kept = bases, kept

    def project(self, factors: Factors) -> Coefficients:
        """Coefficients of `factors` on the bases: eps_alpha = basis_A^T A^T, eps_beta = basis_B^T B."""
        _check_modules(factors, self.bases)
        coefficients = {}
        for name, (A, B) in factors.items():
            basis_B, basis_A = self.bases[name]
            coefficients[name] = (basis_A.T @ A.T.float(), basis_B.T @ B.float())
        return coefficients

    def reconstruct(self, coefficients: Coefficients) -> Factors:
        """LoRA factors from coefficients: A = (basis_A eps_alpha)^T, B = basis_B eps_beta."""
        _check_modules(coefficients, self.bases)
        factors = {}
        for name, (eps_alpha, eps_beta) in coefficients.items():
            basis_B, basis_A = self.bases[name]
            factors[name] = ((basis_A @ eps_alpha).T.contiguous(), basis_B @ eps_beta)
        return factors

    def add_task(self, factors: Factors, name: str | None = None) -> int:
        """Add a trained task (replacing the task of the same name) and return its index.
        UWSH: project it on the fixed basis. Share: merge it."""
        name = name or f"task{len(self.tasks)}"
        if self.method == "share":
            return self.merge(factors, name)
        if not self.bases:
            raise ValueError("a uwsh subspace needs a basis first: Subspace.fit(adapters, 'uwsh', ...)")
        if name in self.names:
            self.tasks[self.names.index(name)] = self.project(factors)
        else:
            self.tasks.append(self.project(factors))
            self.names.append(name)
        return self.names.index(name)

    def task(self, name: str) -> Coefficients | None:
        """The coefficients of the task called `name`, or None."""
        return self.tasks[self.names.index(name)] if name in self.names else None

    def merge(self, factors: Factors, name: str | None = None) -> int:
        """Share's update: reconstruct every task (but an earlier one of the same name, which `factors` replace),
        stack them with `factors`, rebuild the bases (same k rule) and re-project every task. The first task
        seeds the bases. Returns the task's index."""
        import torch

        if self.method != "share":
            raise ValueError("merge is Share's update; a uwsh basis stays fixed")
        name = name or f"task{len(self.tasks)}"
        keep = [i for i, n in enumerate(self.names) if n != name]
        adapters = [self.reconstruct(self.tasks[i]) for i in keep] + [factors]
        spans = None
        if self.bases:
            # Every reconstructed task lies in the old bases, so the new one lies in span(old basis, new factor):
            # a (k + r)-column problem instead of an SVD of all T * r stacked columns.
            _check_modules(factors, self.bases)
            spans = {
                name: (
                    torch.linalg.qr(torch.cat([basis_B, factors[name][1].float()], dim=1)).Q,
                    torch.linalg.qr(torch.cat([basis_A, factors[name][0].T.float()], dim=1)).Q,
                )
                for name, (basis_B, basis_A) in self.bases.items()
            }
        self._set_bases(adapters, spans)
        self.tasks = [self.project(a) for a in adapters]
        self.names = [self.names[i] for i in keep] + [name]
        return len(self.tasks) - 1

    def export(self, task: int | str) -> Factors:
        """Rank-r LoRA factors of one task, as the subspace holds it now (after merges: projected on the bases)."""
        if isinstance(task, str):
            task = self.names.index(task)
        return self.reconstruct(self.tasks[task])

    def trainable_params(self, r: int, phi: int = 0) -> int:
        """Parameters a new task trains: per module k * r coefficients per side, plus phi temporary directions."""
        return sum(
            _share_params(basis_A.shape[0], basis_B.shape[0], basis_A.shape[1], basis_B.shape[1], r, phi)
            for basis_B, basis_A in self.bases.values()
        )

    def lora_params(self, r: int) -> int:
        """Parameters a plain rank-r LoRA on the same modules trains, for comparison."""
        return sum(r * (basis_A.shape[0] + basis_B.shape[0]) for basis_B, basis_A in self.bases.values())

    def save(self, path: str | Path) -> Path:
        """Write the bases and coefficients (safetensors) and the method and k rule (json) to directory `path`."""
        from safetensors.torch import save_file

        tensors = {}
        for name, (basis_B, basis_A) in self.bases.items():
            tensors[f"basis.{name}.B"], tensors[f"basis.{name}.A"] = basis_B, basis_A
        for i, task in enumerate(self.tasks):
            for name, (eps_alpha, eps_beta) in task.items():
                tensors[f"task.{i}.{name}.alpha"], tensors[f"task.{i}.{name}.beta"] = eps_alpha, eps_beta
        meta = {
            "method": self.method,
            "k": self.k,
            "explained_variance": self.explained_variance,
            "modules": sorted(self.bases),
            "tasks": len(self.tasks),
            "names": self.names,
            "kept": {name: list(kept) for name, kept in self.kept.items()},
        }
        with staged_dir(path) as tmp:
            save_file({key: t.contiguous() for key, t in tensors.items()}, str(tmp / TENSORS))
            (tmp / META).write_text(json.dumps(meta, indent=2) + "\n")
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> Subspace:
        """Read a subspace written by `save`."""
        from safetensors.torch import load_file

        path = Path(path)
        meta = json.loads((path / META).read_text())
        tensors = load_file(str(path / TENSORS))
        sub = cls(meta["method"], meta["k"], meta["explained_variance"])
        sub.bases = {name: (tensors[f"basis.{name}.B"], tensors[f"basis.{name}.A"]) for name in meta["modules"]}
        sub.tasks = [
            {name: (tensors[f"task.{i}.{name}.alpha"], tensors[f"task.{i}.{name}.beta"]) for name in meta["modules"]}
            for i in range(meta["tasks"])
        ]
        sub.names = meta.get("names") or [f"task{i}" for i in range(meta["tasks"])]
        sub.kept = {name: tuple(kept) for name, kept in meta["kept"].items()}
        return sub


def _check_modules(factors: dict, modules) -> None:
    if set(factors) != set(modules):
        missing, extra = sorted(set(modules) - set(factors)), sorted(set(factors) - set(modules))
        raise ValueError(f"modules differ from the subspace's: missing {missing}, extra {extra}")


def projection_shapes(config: dict) -> dict[str, tuple[int, int]]:
    """(d_in, d_out) of each attention and MLP projection of a Qwen2/Llama-style decoder layer, from its config."""
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    kv = (config.get("num_key_value_heads") or heads) * head_dim
    inter = config["intermediate_size"]
    return {
        "q_proj": (hidden, heads * head_dim),
        "k_proj": (hidden, kv),
        "v_proj": (hidden, kv),
        "o_proj": (heads * head_dim, hidden),
        "gate_proj": (hidden, inter),
        "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
    }


def param_counts(config: dict, target_modules, r: int, k: int, phi: int = 0) -> dict:
    """Trainable parameters of a rank-r LoRA and of a Share task (k basis columns per side, phi temporary
    directions) on `target_modules` of every layer of a decoder, from its config alone."""
    shapes = projection_shapes(config)
    unknown = sorted(set(target_modules) - set(shapes))
    if unknown:
        raise ValueError(f"unknown target modules {unknown}; expected some of {PROJECTIONS}")
    layers = config["num_hidden_layers"]
    lora = layers * sum(r * sum(shapes[m]) for m in target_modules)
    share = layers * sum(_share_params(*shapes[m], k, k, r, phi) for m in target_modules)
    return {"lora": lora, "share": share, "ratio": share / lora}
