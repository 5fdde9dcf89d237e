"""The parts of the parallel layer that need no process group: mesh shapes, pipeline splits,
straggler detection, verify's comparison, the launcher's torchrun arguments."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import save_file

from scaletrain.config.load import load_config
from scaletrain.diagnose.verify import compare, reference_overrides, tolerance
from scaletrain.errors import UserError
from scaletrain.parallel.config import ParallelConfig
from scaletrain.parallel.dims import STRATEGIES, ParallelDims
from scaletrain.cli.launch import torchrun_args
from scaletrain.parallel.pipeline import stage_layers
from scaletrain.train.ranks import _ranks_named, stragglers


def dims(strategy: str, world: int, **sizes) -> ParallelDims:
    return ParallelDims.from_config(ParallelConfig(strategy=strategy, **sizes), world)


# strategy, world, sizes -> (dp_replicate, dp_shard, tp, pp), zero1, mesh (shape, names)
LAYOUTS = [
    ("single", 1, {}, (1, 1, 1, 1), False, ((), ())),
    ("ddp", 2, {}, (2, 1, 1, 1), False, ((2,), ("dp",))),
    ("zero1", 3, {}, (3, 1, 1, 1), True, ((3,), ("dp",))),
    ("fsdp", 4, {}, (1, 4, 1, 1), False, ((4,), ("dp",))),
    ("tp", 2, {}, (1, 1, 2, 1), False, ((2,), ("tp",))),
    ("tp", 4, {"tp_size": 4}, (1, 1, 4, 1), False, ((4,), ("tp",))),
    ("fsdp+tp", 4, {}, (1, 2, 2, 1), False, ((2, 2), ("dp", "tp"))),
    ("fsdp+tp", 8, {"tp_size": 4}, (1, 2, 4, 1), False, ((2, 4), ("dp", "tp"))),
    ("pp", 2, {}, (1, 1, 1, 2), False, ((2,), ("pp",))),
    ("pp", 4, {}, (1, 1, 1, 4), False, ((4,), ("pp",))),
    ("pp+ddp", 4, {}, (2, 1, 1, 2), False, ((2, 2), ("pp", "dp"))),
    ("pp+fsdp", 4, {}, (1, 2, 1, 2), False, ((2, 2), ("pp", "dp"))),
    ("pp+fsdp", 6, {"pp_size": 3}, (1, 2, 1, 3), False, ((3, 2), ("pp", "dp"))),
    ("pp+ddp", 8, {"pp_size": 2}, (4, 1, 1, 2), False, ((2, 4), ("pp", "dp"))),
]


@pytest.mark.parametrize("strategy, world, sizes, degrees, zero1, mesh", LAYOUTS,
                         ids=[f"{s}x{w}{''.join(f'-{k}{v}' for k, v in z.items())}" for s, w, z, *_ in LAYOUTS])
def test_dims_from_every_strategy(strategy, world, sizes, degrees, zero1, mesh):
    d = dims(strategy, world, **sizes)
    assert (d.dp_replicate, d.dp_shard, d.tp, d.pp) == degrees and d.zero1 == zero1
    assert d.world == world and d.strategy == strategy  # the typed form says the same layout back
    assert d.mesh_shape() == mesh
    assert d.dp_size == degrees[0] * degrees[1]
    assert d.fsdp == (degrees[1] > 1) and d.ddp == (degrees[0] > 1)
    assert d.tp_enabled == (degrees[2] > 1) and d.pp_enabled == (degrees[3] > 1)
    assert d.sharded_params == (d.fsdp or d.tp_enabled)
    # FSDP casts its parameters itself: autocast is off exactly there
    assert d.autocast_precision("bf16") == ("fp32" if d.fsdp else "bf16")


def test_every_strategy_has_a_row():
    assert {s for s, *_ in LAYOUTS} == set(STRATEGIES)


@pytest.mark.parametrize("strategy, world, sizes, message", [
    ("single", 2, {}, "parallel.strategy: single, but 2 ranks"),
    ("ddp", 1, {}, "parallel.strategy: ddp needs several processes"),
    ("pp+fsdp", 1, {}, "parallel.strategy: pp+fsdp needs several processes"),
    ("tp", 4, {"tp_size": 2}, "parallel.tp_size: 2, but strategy tp uses all 4 ranks"),
    ("fsdp+tp", 3, {"tp_size": 2}, "parallel.tp_size: 2 must be at least 2 and divide the number of ranks (3)"),
    ("fsdp+tp", 2, {}, "parallel.strategy: fsdp+tp on 2 ranks with parallel.tp_size=2 leaves one data-parallel"),
    ("pp+ddp", 2, {}, "use parallel.strategy=pp, or 4 ranks"),
    ("pp+fsdp", 6, {"pp_size": 4}, "parallel.pp_size: 4 must be at least 2 and divide the number of ranks (6)"),
])
def test_impossible_layouts_name_their_keys(strategy, world, sizes, message):
    with pytest.raises(UserError, match=re.escape(message)):
        dims(strategy, world, **sizes)


def test_the_config_checks_the_layout_against_nproc_before_anything_starts():
    with pytest.raises(UserError, match=re.escape("parallel.pp_size: 3 must be at least 2 and divide")):
        load_config("gpt-tiny", ["parallel.strategy=pp+fsdp", "parallel.nproc=4", "parallel.pp_size=3"])
    # started by torchrun itself (nproc 1): the world is known only then, so the config accepts it
    assert load_config("gpt-tiny", ["parallel.strategy=pp+fsdp"]).parallel.strategy == "pp+fsdp"


def test_nothing_outside_dims_reads_the_strategy_string():
    """`parallel.strategy` is read in one place, ParallelDims.from_config (the issue's contract):
    no other code takes the attribute `<...>.parallel.strategy` or `parallel.strategy`."""
    import ast
    import pathlib

    import scaletrain

    def reads(tree) -> bool:
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "strategy" and isinstance(node.ctx, ast.Load):
                owner = node.value
                if (isinstance(owner, ast.Attribute) and owner.attr == "parallel") or \
                        (isinstance(owner, ast.Name) and owner.id == "parallel"):
                    return True
        return False

    root = pathlib.Path(scaletrain.__file__).parent
    readers = sorted(str(p.relative_to(root)) for p in root.rglob("*.py") if reads(ast.parse(p.read_text())))
    assert readers == ["parallel/dims.py"], readers


def test_pipeline_stages_cover_every_block_once():
    for n_layer in range(1, 9):
        for stages in range(1, n_layer + 1):
            blocks = [i for s in range(stages) for i in stage_layers(n_layer, stages, s)]
            assert blocks == list(range(n_layer))
            sizes = [len(stage_layers(n_layer, stages, s)) for s in range(stages)]
            assert max(sizes) - min(sizes) <= 1


def test_stragglers_are_ranks_slower_than_the_median_by_the_factor():
    assert stragglers([0.10, 0.11, 0.30, 0.10], 1.5) == [2]
    assert stragglers([0.10, 0.14], 1.5) == []
    assert stragglers([0.10, 0.16], 1.5) == [1]  # two ranks: each against the other
    assert stragglers([0.1], 1.5) == []


def test_rank_named_from_monitored_barrier_messages():
    assert _ranks_named("Rank 1 failed to pass monitoredBarrier in 5000 ms") == "rank 1"
    assert _ranks_named("Ranks 1, 3 failed to pass monitoredBarrier in 5000 ms") == "ranks 1, 3"


def test_verify_compares_loss_and_relative_deviation(tmp_path):
    run, ref = tmp_path / "run", tmp_path / "ref"
    run.mkdir()
    ref.mkdir()
    w = torch.tensor([3.0, 4.0])  # norm 5
    save_file({"w": w}, str(ref / "step_00001.safetensors"), metadata={"loss": "2.0"})
    save_file({"w": w + torch.tensor([0.0, 0.05])}, str(run / "step_00001.safetensors"), metadata={"loss": "2.5"})
    [row] = compare(run, ref, 1)
    assert row["loss_diff"] == pytest.approx(0.5)
    assert row["param_rel_dev"] == pytest.approx(0.05 / 5.0, rel=1e-5)  # float32 weights
    assert row["param_max_abs"] == pytest.approx(0.05, rel=1e-5)


def test_verify_reference_is_one_process_fp32_with_the_same_global_batch():
    cfg = load_config("gpt-tiny", ["parallel.strategy=ddp", "parallel.nproc=2", "train.grad_accum=3",
                                   "train.batch_size=4", "train.precision=bf16"])
    ref = reference_overrides(cfg)
    assert "train.batch_size=24" in ref and "train.grad_accum=1" in ref and "train.precision=fp32" in ref
    assert tolerance(cfg) == (5e-2, 1e-1)
    sgd = load_config("gpt-tiny", ["optim.name=sgd", "train.precision=fp32"])
    assert tolerance(sgd) == (1e-5, 1e-5)


def test_launcher_starts_torchrun_standalone_or_with_rendezvous():
    one = load_config("gpt-tiny", ["parallel.strategy=ddp", "parallel.nproc=2", "parallel.max_restarts=3"])
    args = torchrun_args(one, ["train", "gpt-tiny"])
    assert args[:4] == ["--nproc-per-node", "2", "--max-restarts", "3"] and "--standalone" in args
    assert args[-4:] == ["--module", "scaletrain", "train", "gpt-tiny"]
    two = load_config("gpt-tiny", ["parallel.strategy=fsdp", "parallel.nnodes=2", "parallel.rdzv_endpoint=h:29500"])
    args = torchrun_args(two, ["train"])
    assert "--standalone" not in args and args[args.index("--rdzv-endpoint") + 1] == "h:29500"


@pytest.mark.parametrize("optimizer", ["adafactor", "adamw8bit"])
def test_optimizers_that_need_whole_tensors_are_refused_under_fsdp(optimizer):
    with pytest.raises(UserError, match=f"optim.name: {optimizer} does not run on sharded"):
        load_config("gpt-tiny", [f"optim.name={optimizer}", "parallel.strategy=fsdp", "parallel.nproc=2"])
    load_config("gpt-tiny", [f"optim.name={optimizer}", "parallel.strategy=ddp", "parallel.nproc=2"])


def test_guard_off_survives_yaml():
    assert load_config("gpt-tiny", ["guard.action=off"]).guard.action == "off"


def test_the_runs_nonfinite_check_agrees_with_the_plain_one_step_after_step():
    """NonfiniteCheck decides once and reuses its flag: each call still answers for its own tensors."""
    import math

    from scaletrain.train.step import NonfiniteCheck, nonfinite_gradients

    check = NonfiniteCheck()
    for bad in (None, (0, 3), None, (1, 0), None):
        tensors = [torch.ones(4, 3), torch.ones(3), torch.tensor(2.0)]
        if bad is not None:
            tensors[bad[0]].view(-1)[bad[1]] = math.inf if bad[0] == 0 else math.nan
        expected = float(nonfinite_gradients([t.clone() for t in tensors]))
        assert float(check(tensors)) == expected == (0.0 if bad is None else 1.0)
        if bad is None:  # the check's scale of 1 leaves the values as they were
            assert torch.equal(tensors[0], torch.ones(4, 3)) and float(tensors[2]) == 2.0
    mixed = NonfiniteCheck()  # bf16 beside fp32: the grouped path, same answer
    assert float(mixed([torch.ones(2, dtype=torch.bfloat16), torch.tensor([math.inf])])) == 1.0
