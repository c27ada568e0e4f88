"""Sharpness-aware minimisation around a base optimiser (DyTox++).

One SAM step: take the gradient g at the weights w, move to w + e with
e = rho * g / ||g|| (SAM) or e = rho * w^2 * g / || |w| * g || (ASAM, the
perturbation scaled by |w|), take the gradient there, move back to w, and let
the base optimiser step with that second gradient.

look-SAM (``look_k`` > 0) makes the full two-pass step only every k steps and
keeps from it the part of the SAM gradient g_s orthogonal to g,
g_v = g_s - ||g_s|| cos(g, g_s) g / ||g||; the steps in between take one pass
and add alpha * ||g|| / ||g_v|| * g_v to their gradient.

Only parameters that have a gradient are perturbed: frozen parameters (no
gradient) are neither perturbed nor updated.
"""
from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn


class SAM:
    """The perturbation bookkeeping of SAM / ASAM / look-SAM for the parameters of ``optimizer``."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, rho: float, adaptive: bool = False, look_k: int = 0,
        look_alpha: float = 0.0,
    ) -> None:
        if rho <= 0:
            raise ValueError(f"SAM needs rho > 0, got {rho}")
        self.optimizer = optimizer
        self.rho = rho
        self.adaptive = adaptive
        self.look_k = look_k
        self.look_alpha = look_alpha
        self._perturbation: dict[nn.Parameter, Tensor] = {}
        self._first_grad: dict[nn.Parameter, Tensor] = {}
        self._orthogonal: dict[nn.Parameter, Tensor] = {}  # look-SAM's g_v

    def parameters_with_grad(self) -> list[nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]

    def is_full_step(self, step: int) -> bool:
        """Plain SAM: always; look-SAM: every ``look_k`` steps (and whenever no direction is stored yet)."""
        return self.look_k <= 0 or step % self.look_k == 0 or not self._orthogonal

    @torch.no_grad()
    def ascend(self, grad_scale: float = 1.0) -> bool:
        """w <- w + e from the current gradients (divided by ``grad_scale`` when AMP scaled them).

        Returns False, and leaves w, when a gradient is not finite (an overflowing AMP pass)."""
        params = self.parameters_with_grad()
        grads = {p: torch.div(cast(Tensor, p.grad), grad_scale) for p in params}
        if not all(torch.isfinite(g).all() for g in grads.values()):
            self._perturbation, self._first_grad = {}, {}  # an overflowing AMP step: the scaler will skip it
            return False
        norm = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(grads[p] * p.abs() if self.adaptive else grads[p]) for p in params])
        )
        scale = self.rho / (norm + 1e-12)
        self._perturbation, self._first_grad = {}, {}
        for p in params:
            e = (grads[p] * p.square() if self.adaptive else grads[p]) * scale
            p.add_(e)
            self._perturbation[p] = e
            self._first_grad[p] = grads[p].clone()
        return True

    @torch.no_grad()
    def restore(self) -> None:
        """w + e -> w, keeping the gradient taken at w + e; look-SAM stores its orthogonal direction, unless
        that gradient overflowed (AMP: the scaler skips the step, the previous direction is kept)."""
        for p, e in self._perturbation.items():
            p.sub_(e)
        if self.look_k > 0:
            orthogonal = {p: self._orthogonal_part(p.grad, g) for p, g in self._first_grad.items()
                          if p.grad is not None}
            if all(torch.isfinite(g_v).all() for g_v in orthogonal.values()):
                self._orthogonal = orthogonal
        self._perturbation, self._first_grad = {}, {}

    @staticmethod
    def _orthogonal_part(sam_grad: Tensor, grad: Tensor) -> Tensor:
        """g_s minus its projection on g."""
        return sam_grad - (sam_grad * grad).sum() / grad.square().sum().clamp_min(1e-24) * grad

    @torch.no_grad()
    def reuse_direction(self) -> None:
        """look-SAM between full steps: g <- g + alpha * ||g|| / ||g_v|| * g_v."""
        for p in self.parameters_with_grad():
            g_v = self._orthogonal.get(p)
            if g_v is None:
                continue
            grad = p.grad
            assert grad is not None  # parameters_with_grad
            grad.add_(self.look_alpha * grad.norm() / g_v.norm().clamp_min(1e-12) * g_v)

    def _ordered_parameters(self) -> list[nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def state_dict(self) -> dict[str, list[Tensor | None]]:
        """look-SAM's stored direction, by position among the optimiser's parameters (for checkpoints)."""
        return {"orthogonal": [self._orthogonal.get(p) for p in self._ordered_parameters()]}

    def load_state_dict(self, state: dict[str, list[Tensor | None]]) -> None:
        params = self._ordered_parameters()
        if len(state["orthogonal"]) != len(params):
            raise ValueError(f"SAM state for {len(state['orthogonal'])} parameters, optimiser has {len(params)}")
        self._orthogonal = {p: g.to(p) for p, g in zip(params, state["orthogonal"], strict=True) if g is not None}


def sam_rho_for_task(rho: float, final: float | None, task_id: int, nb_tasks: int) -> float:
    """``sam_final`` set: rho goes linearly from ``rho`` at the first task to ``final`` at the last."""
    if final is None or nb_tasks <= 1:
        return rho
    return rho + (final - rho) * task_id / (nb_tasks - 1)


