import copy

import pytest
import torch

from scaletrain.errors import UserError
from scaletrain.models.gpt.model import GPT, GPTArgs
from scaletrain.models.mlp.model import MLP, MLPArgs
from scaletrain.optim import available, build_optimizer, register
from scaletrain.optim.param_groups import param_groups
from scaletrain.optim.registry import OPTIMIZERS

def tiny_gpt(**over) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTArgs(**{**dict(vocab_size=37, seq_len=8, n_layer=2, n_head=2, d_model=16, bias=True), **over}))


def ids(ps):
    return [id(p) for p in ps]


@pytest.mark.parametrize("tie", [True, False])
def test_every_param_exactly_once(tie):
    model = tiny_gpt(tie_embeddings=tie)
    groups = param_groups(model, 0.1, {"blocks.*.mlp.*": 0.5, "lm_head.*": 2.0})
    seen = [i for g in groups for i in ids(g["params"])]
    assert len(seen) == len(set(seen))
    assert set(seen) == {id(p) for p in model.parameters()}


def test_decay_split():
    model = tiny_gpt()
    groups = {g["name"]: g for g in param_groups(model, 0.1)}
    assert set(groups) == {"decay", "no_decay"}
    assert groups["decay"]["weight_decay"] == 0.1 and groups["no_decay"]["weight_decay"] == 0.0
    assert all(g["lr_mult"] == 1.0 for g in groups.values())
    nd = set(ids(groups["no_decay"]["params"]))
    for p in (model.tok_emb.weight, model.pos_emb.weight, model.lm_head.weight, model.norm_f.weight,
              model.blocks[0].norm1.weight, model.blocks[0].attn.qkv.bias):
        assert id(p) in nd
    assert set(ids(groups["decay"]["params"])) == {
        id(m.weight) for b in model.blocks for m in (b.attn.qkv, b.attn.proj, b.mlp.fc, b.mlp.proj)}


def test_untied_head_decays():
    model = tiny_gpt(tie_embeddings=False)
    decay = {g["name"]: g for g in param_groups(model, 0.1)}["decay"]
    assert id(model.lm_head.weight) in ids(decay["params"])


def test_lr_multipliers():
    model = tiny_gpt()
    groups = {g["name"]: g for g in param_groups(model, 0.1, {"blocks.*.mlp.*": 0.5, "lm_head.*": 2.0})}
    assert set(groups) == {"decay", "no_decay", "blocks.*.mlp.*", "blocks.*.mlp.*:no_decay", "lm_head.*:no_decay"}
    mlp = groups["blocks.*.mlp.*"]
    assert mlp["lr_mult"] == 0.5 and mlp["weight_decay"] == 0.1
    assert set(ids(mlp["params"])) == {id(b.mlp.fc.weight) for b in model.blocks} | {id(b.mlp.proj.weight) for b in model.blocks}
    assert groups["blocks.*.mlp.*:no_decay"]["weight_decay"] == 0.0
    # The tied head is the embedding weight: matched through its lm_head name, no decay.
    head = groups["lm_head.*:no_decay"]
    assert ids(head["params"]) == [id(model.tok_emb.weight)] and head["lr_mult"] == 2.0


def test_unknown_pattern_and_bad_multiplier():
    with pytest.raises(UserError, match=r"decoder\.\*"):
        param_groups(tiny_gpt(), 0.1, {"decoder.*": 2.0})
    with pytest.raises(UserError, match="blocks"):
        param_groups(tiny_gpt(), 0.1, {"blocks.*": -1})


def test_frozen_params_skipped():
    model = tiny_gpt()
    model.tok_emb.weight.requires_grad_(False)
    seen = {i for g in param_groups(model, 0.1) for i in ids(g["params"])}
    assert id(model.tok_emb.weight) not in seen


def _run(model, opt, steps=5):
    torch.manual_seed(123)
    for _ in range(steps):
        x = torch.randn(4, 12)
        loss = model(x).logsumexp(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


REFS = {
    "adamw": lambda gs, lr: torch.optim.AdamW(gs, lr=lr, betas=(0.9, 0.95), eps=1e-8, fused=True),
    "adam": lambda gs, lr: torch.optim.Adam(gs, lr=lr, betas=(0.9, 0.95), eps=1e-8, fused=True),
    "sgd": lambda gs, lr: torch.optim.SGD(gs, lr=lr),
    "momentum": lambda gs, lr: torch.optim.SGD(gs, lr=lr, momentum=0.9),
    "nesterov": lambda gs, lr: torch.optim.SGD(gs, lr=lr, momentum=0.9, nesterov=True),
}


@pytest.mark.parametrize("name", sorted(REFS))
def test_trajectory_matches_torch(name):
    torch.manual_seed(0)
    base = MLP(MLPArgs(input_dim=12, num_classes=5, hidden=(16,)))
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    lr, wd = 1e-2, 0.1
    ours = build_optimizer(name, param_groups(a, wd, {"net.2.*": 0.5}), lr=lr, weight_decay=wd)
    ref_groups = [{"params": g["params"], "weight_decay": g["weight_decay"], "lr": lr * g["lr_mult"]}
                  for g in param_groups(b, wd, {"net.2.*": 0.5})]
    ref = REFS[name](ref_groups, lr)
    for pa, pb in zip(_run(a, ours), _run(b, ref)):
        assert torch.equal(pa, pb)
    assert not torch.equal(next(a.parameters()), next(base.parameters()))


def test_adamw_fused_default_and_group_lrs():
    model = tiny_gpt()
    opt = build_optimizer("adamw", param_groups(model, 0.1, {"lm_head.*": 2.0}), lr=3e-4, weight_decay=0.1)
    assert opt.defaults["fused"] is True
    by_name = {g["name"]: g for g in opt.param_groups}
    assert by_name["decay"]["lr"] == by_name["decay"]["base_lr"] == 3e-4
    assert by_name["lm_head.*:no_decay"]["lr"] == pytest.approx(6e-4)
    assert by_name["no_decay"]["weight_decay"] == 0.0
    assert not build_optimizer("adamw", param_groups(model, 0.1), lr=1e-3, weight_decay=0.1, fused=False).defaults["fused"]


def test_plain_groups_get_defaults():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = build_optimizer("sgd", [{"params": [p]}], lr=0.5, weight_decay=0.01)
    g = opt.param_groups[0]
    assert (g["lr"], g["base_lr"], g["weight_decay"], g["lr_mult"]) == (0.5, 0.5, 0.01, 1.0)


def test_unknown_optimizer_and_registry():
    with pytest.raises(UserError, match="lamb2.*adamw"):
        build_optimizer("lamb2", [], lr=1e-3, weight_decay=0.0)
    assert set(available()) == {"gd", "sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw",
                                "lamb", "lars", "lion", "muon", "adafactor", "adamw8bit"}

    @register("_test_sgd")
    def _f(groups, *, lr, **_):
        return torch.optim.SGD(groups, lr=lr)
    try:
        p = torch.nn.Parameter(torch.zeros(2))
        assert isinstance(build_optimizer("_test_sgd", [{"params": [p]}], lr=0.1, weight_decay=0), torch.optim.SGD)
        with pytest.raises(ValueError):
            register("_test_sgd")(_f)
    finally:
        OPTIMIZERS.pop("_test_sgd")


@pytest.mark.parametrize("name,cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_fused_kernels_agree_with_the_plain_loop(name, cls):
    """The registry picks fused kernels; they must follow the same update rule as the for-loop one."""
    torch.manual_seed(0)
    base = MLP(MLPArgs(input_dim=12, num_classes=5, hidden=(16,)))
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    ours = build_optimizer(name, param_groups(a, 0.1), lr=1e-2, weight_decay=0.1)
    assert all(g.get("fused") for g in ours.param_groups)
    ref = cls([{"params": g["params"], "weight_decay": g["weight_decay"]} for g in param_groups(b, 0.1)],
              lr=1e-2, betas=(0.9, 0.95), eps=1e-8, foreach=False)
    for pa, pb in zip(_run(a, ours), _run(b, ref)):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)
