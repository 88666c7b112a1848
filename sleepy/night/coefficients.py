"""Training inside a subspace: a peft LoRA model whose factors are basis x coefficients.

Each LoRA module's lora_A and lora_B layer is swapped for a `SubspaceFactor`: the subspace's basis for that
module and side (fixed), the task's coefficients (trained) and `phi` temporary directions outside the basis
(trained, with their coefficients). peft's forward is untouched (it calls the layer and reads `.weight`), so the
one training loop in trainer.py trains a plain LoRA or a subspace task alike; afterwards `factors` reads the
effective rank-r factors back, for the subspace to merge or project.

    A = ([basis_A, temp_A] [eps_alpha; temp_alpha])^T        B = [basis_B, temp_B] [eps_beta; temp_beta]
"""

from __future__ import annotations

import torch
from torch import nn

from sleepy.lora import PREFIX
from sleepy.night.subspace import Coefficients, Factors, Subspace, temporary_count


class SubspaceFactor(nn.Module):
    """One side of one LoRA module: weight = basis coef + temp temp_coef (transposed for the A side)."""

    def __init__(self, basis: torch.Tensor, coef: torch.Tensor, temp: torch.Tensor, temp_coef: torch.Tensor,
                 transpose: bool):
        super().__init__()
        self.register_buffer("basis", basis.float().contiguous())
        self.coef = nn.Parameter(coef.float().clone())
        self.temp = nn.Parameter(temp.float().clone()) if temp.shape[1] else None
        self.temp_coef = nn.Parameter(temp_coef.float().clone()) if temp.shape[1] else None
        self.transpose = transpose

    @property
    def weight(self) -> torch.Tensor:
        w = self.basis @ self.coef
        if self.temp is not None:
            w = w + self.temp @ self.temp_coef
        return w.T if self.transpose else w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight)


def lora_layers(model) -> dict[str, nn.Module]:
    """The peft LoRA layers of `model`, by the module names adapter files use (model.layers.0.self_attn.q_proj)."""
    return {name.removeprefix(PREFIX): m for name, m in model.named_modules()
            if hasattr(m, "lora_A") and isinstance(m.lora_A, nn.ModuleDict) and "default" in m.lora_A}


def factors(model) -> Factors:
    """The effective LoRA factors (A r x d_in, B d_out x r) of every LoRA layer, float32 on the CPU."""
    with torch.no_grad():
        return {name: (m.lora_A["default"].weight.detach().float().cpu().clone(),
                       m.lora_B["default"].weight.detach().float().cpu().clone())
                for name, m in lora_layers(model).items()}


def shapes(model) -> dict[str, tuple[tuple[int, int], tuple[int, int]]]:
    """The (A, B) factor shapes of every LoRA layer, to match adapters against the model."""
    return {name: (tuple(m.lora_A["default"].weight.shape), tuple(m.lora_B["default"].weight.shape))
            for name, m in lora_layers(model).items()}


def fresh(subspace: Subspace, r: int, generator: torch.Generator) -> Coefficients:
    """A new task's coefficients: eps_alpha random (each rank direction of A with the squared norm of peft's
    Kaiming init, 1/3), eps_beta zero, so the adapter starts as the base model, as a plain LoRA does."""
    out = {}
    for name, (basis_B, basis_A) in subspace.bases.items():
        k_A = basis_A.shape[1]
        eps_alpha = torch.randn(k_A, r, generator=generator) / (3 * k_A) ** 0.5
        out[name] = (eps_alpha, torch.zeros(basis_B.shape[1], r))
    return out


def _temporary(basis: torch.Tensor, phi: int, generator: torch.Generator) -> torch.Tensor:
    """Random orthonormal columns orthogonal to `basis`: phi of them, or as many as the space leaves (a basis that
    spans it needs none)."""
    d = basis.shape[0]
    phi = temporary_count(phi, d, basis.shape[1])
    g = torch.randn(d, phi, generator=generator)
    g = g - basis @ (basis.T @ g)
    return torch.linalg.qr(g).Q[:, :phi]


def attach(model, subspace: Subspace, init: Coefficients, phi: int = 0, seed: int = 0) -> int:
    """Swap every LoRA layer of the peft `model` for subspace factors starting at coefficients `init`, with phi
    temporary directions per side; everything else stays frozen. Returns the trainable-parameter count."""
    generator = torch.Generator().manual_seed(seed)
    layers = lora_layers(model)
    missing = sorted(set(subspace.bases) ^ set(layers))
    if missing:
        raise ValueError(f"the subspace's modules differ from the model's LoRA layers: {missing[:4]}")
    for p in model.parameters():
        p.requires_grad_(False)
    for name, layer in layers.items():
        basis_B, basis_A = subspace.bases[name]
        eps_alpha, eps_beta = init[name]
        A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        if (basis_A.shape[0], basis_B.shape[0]) != (A.shape[1], B.shape[0]) or eps_alpha.shape[1] != A.shape[0]:
            raise ValueError(f"{name}: subspace bases {tuple(basis_A.shape)}, {tuple(basis_B.shape)} and "
                             f"coefficients of rank {eps_alpha.shape[1]} do not fit LoRA factors {tuple(A.shape)}, "
                             f"{tuple(B.shape)}")
        r = A.shape[0]
        temp_A, temp_B = _temporary(basis_A, phi, generator), _temporary(basis_B, phi, generator)
        temp_alpha = torch.randn(temp_A.shape[1], r, generator=generator) / (3 * max(temp_A.shape[1], 1)) ** 0.5
        device = A.device
        layer.lora_A["default"] = SubspaceFactor(basis_A, eps_alpha, temp_A, temp_alpha, transpose=True).to(device)
        layer.lora_B["default"] = SubspaceFactor(basis_B, eps_beta, temp_B, torch.zeros(temp_B.shape[1], r),
                                                 transpose=False).to(device)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
