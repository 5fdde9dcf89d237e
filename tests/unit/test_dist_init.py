"""The process group a CUDA rank joins serves CPU and CUDA tensors, and collectives are made on the
rank's own device. No GPU here: torch's calls are recorded instead of made."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from scaletrain.parallel import dist as sdist


@pytest.fixture
def fake_torchrun(monkeypatch):
    calls = {}
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: calls.setdefault("init", kw))
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: calls.setdefault("set_device", index))
    monkeypatch.setattr(sdist, "_collective_device", None)
    monkeypatch.setattr(sdist, "_timeout", None)
    return calls


def test_a_cuda_rank_joins_one_group_for_cpu_and_cuda_tensors(fake_torchrun):
    info = sdist.init_distributed("cuda", 30.0)
    assert fake_torchrun["init"]["backend"] == "cpu:gloo,cuda:nccl"  # NCCL alone refuses CPU tensors
    assert fake_torchrun["init"]["timeout"].total_seconds() == 30.0
    assert fake_torchrun["set_device"] == 1  # before the group: NCCL and object collectives use it
    assert info.device == torch.device("cuda", 1) and (info.rank, info.world, info.local_rank) == (3, 4, 1)
    assert sdist.collective_device() is info.device  # the one object call sites ask for


def test_a_cpu_rank_joins_a_gloo_group(fake_torchrun):
    info = sdist.init_distributed("cpu", 30.0)
    assert fake_torchrun["init"]["backend"] == "gloo" and "set_device" not in fake_torchrun
    assert sdist.collective_device() is info.device and info.device == torch.device("cpu")
