"""Muon for the hidden matrices, AdamW for everything else, as one optimizer object.

Muon (Jordan et al. 2024; torch.optim.Muon) orthogonalises the momentum of each 2-D weight with a
few Newton-Schulz iterations, so every direction of the matrix moves at the same rate:

    B <- mu B + g;   B~ = g + mu B (nesterov) or B;   O = NS_k(B~);   W <- W (1 - lr wd) - lr' O

with lr' = lr * 0.2 sqrt(max(rows, cols)) ("match_rms_adamw", Moonlight: the update has AdamW's RMS,
so one lr serves both halves) or lr * sqrt(max(1, rows/cols)) ("original"). It is defined for
hidden matrices only: embeddings, the output head, biases and norm gains go to AdamW, as the
authors prescribe. Roles come from param_groups ("matrix" -> Muon; "embedding", "output", "vector"
-> AdamW); plain groups without roles send every 2-D tensor to Muon.

One object, so that schedules (apply_lr over `param_groups`), grad clipping and DCP checkpoints
(`get_state_dict(model, opt)`) see an ordinary optimizer: the groups of both inner optimizers are
this object's groups (each tagged "optimizer": "muon" | "adamw") and both share this object's
`state`, so the standard `state_dict` / `load_state_dict` cover everything.
"""
from __future__ import annotations

import torch

from scaletrain.optim.classic import can_fuse

_KIND = "optimizer"


class MuonAdamW(torch.optim.Optimizer):
    def __init__(self, muon_groups: list[dict], adamw_groups: list[dict], *, muon_kwargs: dict,
                 adamw_kwargs: dict):
        inner = []
        if muon_groups:
            inner.append(("muon", torch.optim.Muon(muon_groups, **muon_kwargs)))
        if adamw_groups:
            inner.append(("adamw", torch.optim.AdamW(adamw_groups, **adamw_kwargs)))
        groups = []
        for kind, opt in inner:
            for g in opt.param_groups:
                g[_KIND] = kind
                groups.append(g)
        super().__init__(groups, defaults={})
        self._inner = dict(inner)
        self._link()

    def _link(self) -> None:
        """Point the inner optimizers at this object's groups and state (after init and after
        load_state_dict, which replaces both)."""
        for kind, opt in self._inner.items():
            opt.param_groups = [g for g in self.param_groups if g[_KIND] == kind]
            opt.state = self.state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._link()

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self._inner.values():
            opt.step()
        return loss


def split_groups(groups: list[dict], roles: list[list[str]] | None, adamw_lr_ratio: float):
    """(Muon groups, AdamW groups): each incoming group split by its parameters' roles."""
    muon_groups, adamw_groups = [], []
    for i, g in enumerate(groups):
        params = g["params"]
        if roles is None:
            to_muon = [p.ndim == 2 for p in params]
        else:
            to_muon = [r == "matrix" and p.ndim == 2 for r, p in zip(roles[i], params)]
        muon_ps = [p for p, m in zip(params, to_muon) if m]
        adamw_ps = [p for p, m in zip(params, to_muon) if not m]
        if muon_ps:
            muon_groups.append({**g, "params": muon_ps})
        if adamw_ps:
            lr = g["lr"] * adamw_lr_ratio
            adamw_groups.append({**g, "params": adamw_ps, "lr": lr, "base_lr": lr})
    return muon_groups, adamw_groups


def build(groups, *, lr, weight_decay, betas, eps, fused, options, roles, **_):
    muon_groups, adamw_groups = split_groups(groups, roles, options.adamw_lr_ratio)
    use_fused = can_fuse(adamw_groups) if fused is None else fused
    return MuonAdamW(
        muon_groups, adamw_groups,
        muon_kwargs=dict(lr=lr, weight_decay=weight_decay, momentum=options.momentum,
                         nesterov=options.nesterov, ns_steps=options.ns_steps,
                         adjust_lr_fn=options.adjust_lr_fn),
        adamw_kwargs=dict(lr=lr * options.adamw_lr_ratio, weight_decay=weight_decay, betas=betas,
                          eps=eps, fused=use_fused or None),
    )
