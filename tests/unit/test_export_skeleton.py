"""The export's meta-device skeleton: no storage held, tied weights tied again after loading, and
the same outputs as the model whose weights it received."""

from __future__ import annotations

import torch

from scaletrain.models.gpt.model import GPT, GPTArgs
from scaletrain.train.ranks import load_full_state, meta_skeleton


def _gpt(rope: bool) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTArgs(vocab_size=64, seq_len=16, n_layer=2, n_head=2, d_model=32, rope=rope))


def test_skeleton_holds_no_weights_and_keeps_ties():
    model = _gpt(rope=False)
    skeleton = meta_skeleton(model)
    assert all(p.is_meta for p in skeleton.parameters())
    assert skeleton.lm_head.weight is skeleton.tok_emb.weight
    assert not model.lm_head.weight.is_meta  # the original is untouched


def test_loaded_skeleton_equals_the_model_and_stays_tied():
    for rope in (False, True):  # rope: non-persistent buffers that no state dict restores
        model = _gpt(rope)
        skeleton = meta_skeleton(model)
        # A full state dict as the export gathers it: separate tensors per name, also for tied ones.
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        rebuilt = load_full_state(skeleton, state)
        assert rebuilt.lm_head.weight is rebuilt.tok_emb.weight
        assert not any(p.is_meta for p in rebuilt.parameters())
        idx = torch.randint(0, 64, (2, 16))
        assert torch.equal(rebuilt(idx), model(idx))
        assert sum(p.numel() for p in rebuilt.parameters()) == sum(p.numel() for p in model.parameters())
