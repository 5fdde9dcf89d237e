"""Split a model's parameters into optimizer groups (weight decay / lr multipliers)."""
from __future__ import annotations

from fnmatch import fnmatchcase

import torch.nn as nn

from scaletrain.errors import UserError


def param_groups(
    model: nn.Module, weight_decay: float, lr_multipliers: dict[str, float] | None = None,
    trained: nn.Module | None = None,
) -> list[dict]:
    """Groups for build_optimizer. Each has `params`, `name`, `weight_decay`, `lr_mult`,
    `param_names` (the canonical name of each parameter) and `param_roles` (each one's role:
    "embedding"; "output", the last matrix in registration order, i.e. the classifier or untied LM
    head; "matrix", the other >= 2-D weights, i.e. hidden layers; "vector", biases and norm gains).
    build_optimizer hands names and roles to the factories (muon places parameters by role) and
    keeps them out of the optimizer's groups, so checkpoints keep their layout.

    Decay applies to matmul weights only (ndim >= 2, not embeddings): decaying biases, norm
    gains or embedding rows just shrinks them toward zero with no regularising benefit.
    A tied LM head *is* the embedding weight, so it is listed once, without decay.

    `lr_multipliers` maps fnmatch globs on parameter names to multipliers; the first
    matching pattern (dict order) wins. A pattern's parameters are split by decay into
    groups named `<pattern>` and `<pattern>:no_decay` (names stay unique for logging).
    A tied weight matches under any of its names (e.g. "lm_head.*" hits tok_emb.weight).

    `trained`: the part of `model` this rank trains (a pipeline stage, which holds the model's
    modules under the model's names). The groups are decided on the whole `model` — it knows that a
    tied head is the embedding, and which matrix is the output — and filled with `trained`'s
    parameters, found by name, so that every stage groups a parameter as one process would.
    """
    lr_multipliers = dict(lr_multipliers or {})
    for pattern, mult in lr_multipliers.items():
        if isinstance(mult, bool) or not isinstance(mult, (int, float)) or mult < 0:
            raise UserError(f"optim.lr_multipliers[{pattern!r}] must be a number >= 0, got {mult!r}")

    embedding_ids = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    # Every name a parameter is reachable under (tied weights have several); first name is canonical.
    names: dict[int, list[str]] = {}
    params: dict[int, nn.Parameter] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if not p.requires_grad:
            continue
        names.setdefault(id(p), []).append(name)
        params[id(p)] = p

    if trained is not None:  # the trained module's own parameter objects (FSDP may have replaced them)
        own = dict(trained.named_parameters(remove_duplicate=False))
        held = {pid: next((own[n] for n in names[pid] if n in own), None) for pid in params}
    canonical: dict[int, int] = {}  # trained's parameter -> the model's
    matched = {pat: False for pat in lr_multipliers}
    buckets: dict[tuple[str, bool], list[nn.Parameter]] = {("", True): [], ("", False): []}
    for pid, p in params.items():
        decay = p.ndim >= 2 and pid not in embedding_ids
        owner = ""
        for pat in lr_multipliers:
            if any(fnmatchcase(n, pat) for n in names[pid]):
                matched[pat] = True
                owner = owner or pat  # later patterns still count as matched
        if trained is None:
            buckets.setdefault((owner, decay), []).append(p)
        elif held[pid] is not None:
            buckets.setdefault((owner, decay), []).append(held[pid])
            canonical[id(held[pid])] = pid

    # The output layer is the last matrix registered, counting tied names: a head tied to the
    # embedding comes last under its own name, so such a model has no separate output matrix.
    matrices = [id(p) for _, p in model.named_parameters(remove_duplicate=False) if p.ndim >= 2 and id(p) in params]
    output_id = matrices[-1] if matrices and matrices[-1] not in embedding_ids else None

    def role(pid: int) -> str:
        if pid in embedding_ids:
            return "embedding"
        if pid == output_id:
            return "output"
        return "matrix" if params[pid].ndim >= 2 else "vector"

    unmatched = [pat for pat, hit in matched.items() if not hit]
    if unmatched:
        raise UserError(f"optim.lr_multipliers pattern(s) {unmatched} match no trainable parameter name")

    groups = []
    key = (lambda p: canonical[id(p)]) if trained is not None else id
    for (owner, decay), ps in buckets.items():
        if not ps:
            continue
        if owner:
            name = owner if decay else f"{owner}:no_decay"
        else:
            name = "decay" if decay else "no_decay"
        groups.append({
            "params": ps,
            "param_names": [names[key(p)][0] for p in ps],
            "param_roles": [role(key(p)) for p in ps],
            "name": name,
            "weight_decay": float(weight_decay) if decay else 0.0,
            "lr_mult": float(lr_multipliers.get(owner, 1.0)),
        })
    return groups
