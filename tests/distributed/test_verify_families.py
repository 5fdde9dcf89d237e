"""`scaletrain verify` for the Llama family in every layout, as tests/distributed/test_parallel.py and
test_layouts.py do for the GPT: each layout's first steps against the one-process reference (2 gloo
ranks, or 4 for the 2-D meshes), both pipeline schedules. SGD keeps the comparison tight (Adam
magnifies rounding in near-zero gradients; docs/parallel.md states the tolerances).
"""

from __future__ import annotations

import pytest

from distributed_helpers import quiet, verified  # noqa: F401 (quiet is a fixture)

pytestmark = [pytest.mark.dist, pytest.mark.slow]

SGD = ["optim.name=sgd", "optim.lr=0.5"]
LAYOUTS = [
    ("ddp", 2, []),
    ("zero1", 2, []),
    ("fsdp", 2, ["parallel.activation_checkpointing=true"]),
    ("tp", 2, []),
    ("pp", 2, ["parallel.pp_schedule=1f1b"]),
    ("pp", 2, ["parallel.pp_schedule=gpipe"]),
    ("fsdp+tp", 4, []),
    ("pp+fsdp", 4, []),
    ("pp+ddp", 4, ["parallel.pp_schedule=gpipe"]),
]


@pytest.mark.parametrize("strategy, ranks, extra", LAYOUTS,
                         ids=[f"{s}{'-' + e[0].split('=')[1] if e else ''}-x{r}" for s, r, e in LAYOUTS])
def test_llama_layout_matches_single_process_reference(tmp_path, quiet, strategy, ranks, extra):
    verified(tmp_path, "llama-tiny", [*quiet, *SGD], strategy, ranks, extra)
