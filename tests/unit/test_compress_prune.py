"""Pruning and low-rank factorization on tiny models, checked against references built by hand."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from scaletrain.compress.load import load_model_dir, save_model_dir
from scaletrain.compress.lowrank import factorize, rank_for_energy
from scaletrain.compress.prune import KeepPruned, magnitude_prune, prunable, sparsity
from scaletrain.compress.structured import prune_structured
from scaletrain.models import build_model


def tiny_gpt(**kw):
    torch.manual_seed(0)
    args = dict(vocab_size=97, seq_len=16, n_layer=2, n_head=4, d_model=32, rope=True, **kw)
    return build_model("gpt", args).eval()


def tiny_mlp():
    torch.manual_seed(0)
    return build_model("mlp", dict(input_dim=12, num_classes=5, hidden=[16, 8])).eval()


def test_magnitude_prune_zeroes_the_smallest_weights_globally():
    model = tiny_gpt()
    pruned, masks = magnitude_prune(model, 0.6)
    assert sparsity(pruned) == pytest.approx(0.6, abs=1e-3)
    assert sparsity(model) == 0.0  # the source is untouched
    every = torch.cat([m.weight.abs().flatten() for m in prunable(model).values()])
    threshold = every.sort().values[int(0.6 * every.numel()) - 1]
    for name, m in prunable(pruned).items():  # kept exactly the weights above the global threshold
        original = model.get_submodule(name).weight
        assert torch.equal(m.weight != 0, original.abs() > threshold)
    assert torch.equal(pruned.lm_head.weight, model.lm_head.weight)  # tied head/embedding not pruned


def test_pruned_weights_stay_zero_while_fine_tuning():
    model = tiny_mlp()
    pruned, masks = magnitude_prune(model, 0.5)
    keeper = KeepPruned(pruned, masks)
    opt = torch.optim.SGD(pruned.parameters(), lr=0.5)
    for _ in range(3):
        loss = pruned(torch.randn(8, 12)).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    keeper.close()
    assert sparsity(pruned) >= 0.5 - 1e-3
    assert not torch.equal(pruned.net[0].weight, magnitude_prune(model, 0.5)[0].net[0].weight)  # it did train


def _zero_removed_gpt(model, small):
    """The original with the removed heads' and units' outputs zeroed: must compute what `small` does."""
    ref = copy.deepcopy(model)
    hd = model.args.d_model // model.args.n_head
    with torch.no_grad():
        for big, sm in zip(ref.blocks, small.blocks):
            kept_cols = {tuple(c.tolist()) for c in sm.attn.proj.weight.T}
            for h in range(model.args.n_head):
                cols = big.attn.proj.weight[:, h * hd:(h + 1) * hd]
                if not any(tuple(c.tolist()) in kept_cols for c in cols.T):
                    cols.zero_()
            kept_units = {tuple(r.tolist()) for r in sm.mlp.fc.weight}
            for j in range(big.mlp.fc.weight.shape[0]):
                if tuple(big.mlp.fc.weight[j].tolist()) not in kept_units:
                    big.mlp.proj.weight[:, j] = 0
    return ref


def test_structured_gpt_removes_heads_and_units_and_computes_the_same(tmp_path):
    model = tiny_gpt()
    small = prune_structured(model, 0.5)
    assert small.args.layer_heads == [2, 2] and small.args.layer_d_ff == [64, 64]
    assert small.blocks[0].attn.qkv.weight.shape == (3 * 2 * 8, 32)
    assert small.blocks[0].mlp.fc.weight.shape == (64, 32)
    assert small.num_params() < 0.65 * model.num_params()
    x = torch.randint(0, 97, (3, 16))
    ref = _zero_removed_gpt(model, small)
    torch.testing.assert_close(small(x), ref(x), rtol=1e-5, atol=1e-5)
    # ... and it loads back from safetensors through model_config.json alone.
    save_model_dir(small, {"name": "gpt", "args": small.args_dict()}, tmp_path)
    again = load_model_dir(tmp_path)
    assert again.args.layer_heads == [2, 2]
    torch.testing.assert_close(again(x), small(x))


def test_structured_gpt_with_no_pruning_is_the_same_model():
    model = tiny_gpt()
    same = prune_structured(model, 0.0)
    x = torch.randint(0, 97, (2, 16))
    torch.testing.assert_close(same(x), model(x))


def _kept_rows(big: torch.Tensor, small: torch.Tensor, cols=None) -> list[int]:
    """Which rows of `big` (restricted to `cols`) reappear in `small`: the kept units."""
    big = big if cols is None else big[:, cols]
    return [j for j in range(big.shape[0]) if any(torch.equal(big[j], r) for r in small)]


def test_structured_mlp_equals_the_original_with_removed_units_zeroed():
    model = tiny_mlp()
    small = prune_structured(model, 0.5)
    assert small.args.hidden == (8, 4)
    assert small.num_params() < model.num_params() / 2
    big, sm = model._linears(), small._linears()
    kept0 = _kept_rows(big[0].weight, sm[0].weight)
    kept1 = _kept_rows(big[1].weight, sm[1].weight, cols=kept0)
    assert len(kept0) == 8 and len(kept1) == 4
    ref = copy.deepcopy(model)
    with torch.no_grad():  # removing a unit = zeroing what reads it
        for layer, kept in ((ref._linears()[1], kept0), (ref._linears()[2], kept1)):
            removed = [j for j in range(layer.weight.shape[1]) if j not in kept]
            layer.weight[:, removed] = 0
    x = torch.randn(6, 12)
    torch.testing.assert_close(small(x), ref(x), rtol=1e-5, atol=1e-5)


def test_rank_for_energy_is_the_smallest_rank_reaching_the_threshold():
    s = torch.tensor([4.0, 2.0, 1.0, 1.0])  # energies 16, 4, 1, 1 of 22
    assert rank_for_energy(s, 16 / 22) == 1
    assert rank_for_energy(s, 0.8) == 2
    assert rank_for_energy(s, 21 / 22) == 3
    assert rank_for_energy(s, 1.0) == 4


def test_lowrank_recovers_a_low_rank_layer_exactly_and_loads_back(tmp_path):
    model = tiny_mlp()
    with torch.no_grad():  # make the first layer rank 3
        a, b = torch.randn(16, 3), torch.randn(3, 12)
        model.net[0].weight.copy_(a @ b)
    fm, ranks = factorize(model, 0.9999)
    assert ranks["net.0"] == 3
    assert isinstance(fm.net[0], nn.Sequential) and fm.net[0][0].weight.shape == (3, 12)
    x = torch.randn(5, 12)
    torch.testing.assert_close(fm.net[0](x), model.net[0](x), rtol=1e-4, atol=1e-4)
    spec = {"name": "mlp", "args": model.args_dict(), "factorized": ranks}
    save_model_dir(fm, spec, tmp_path)
    torch.testing.assert_close(load_model_dir(tmp_path)(x), fm(x))


def test_lowrank_skips_layers_that_would_not_shrink():
    model = tiny_gpt()
    fm, ranks = factorize(model, 1.0)  # full rank: r (in + out) >= in x out everywhere
    assert ranks == {}
    x = torch.randint(0, 97, (2, 16))
    torch.testing.assert_close(fm(x), model(x))
    fm, ranks = factorize(model, 0.5)
    for name, r in ranks.items():
        layer = model.get_submodule(name)
        assert r * (layer.in_features + layer.out_features) < layer.in_features * layer.out_features
        s = torch.linalg.svdvals(layer.weight.double())
        e = (s**2).cumsum(0) / (s**2).sum()
        assert e[r - 1] >= 0.5 and (r == 1 or e[r - 2] < 0.5)
