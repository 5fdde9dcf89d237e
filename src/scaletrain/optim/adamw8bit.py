"""AdamW with 8-bit block-wise quantized states (Dettmers et al. 2022), from bitsandbytes.

Both moments are stored as uint8 codes of a dynamic (signed / unsigned) quantization map, one
float32 absmax per block of 256 values: 2 + 2 * 4 / 256 ~= 2.03 bytes per parameter instead of
AdamW's 8. Each step dequantizes a block, applies the AdamW update in float32 and requantizes.
Tensors under `min_8bit_size` elements keep float32 states (8 bytes/param), so a model's average
lies a little above 2.03 (docs/optimizers.md has the measured figure).

bitsandbytes 0.50 runs this on CPU (and CUDA). Its state is plain tensors (uint8 codes, float32
absmax and maps): `get_state_dict(model, opt)` + `dcp.save` store them like any other optimizer.
"""
from __future__ import annotations

from scaletrain.extras import require


def build(groups, *, lr, weight_decay, betas, eps, options, **_):
    bnb = require("bitsandbytes", "bnb", "optim.name=adamw8bit")
    return bnb.optim.AdamW8bit(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                               min_8bit_size=options.min_8bit_size)
