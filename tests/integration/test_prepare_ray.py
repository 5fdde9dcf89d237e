"""`scaletrain prepare --engine ray`: the local engine's bytes, on a local Ray of 2 CPUs; a worker
killed mid-run is retried by Ray and the output does not change.

One Ray session for the module (starting Ray costs seconds); the engine joins it and leaves it
running. Needs the `ray` extra (`pip install 'scaletrain[ray]'`).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from scaletrain.data import pipeline, shards, stages

from test_prepare_pipeline import MODULES, _cfg, _files, make_corpus

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

TIMING = ("seconds", "phase_seconds", "workers", "created", "engine", "worker_peak_rss_bytes")


@pytest.fixture(scope="module")
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """The test corpus (with planted duplicates) and the local engine's output on it."""
    root = tmp_path_factory.mktemp("ray-corpus")
    src, _ = make_corpus(root)
    stats = pipeline.run_prepare(_cfg(src), root / "local", workers=2, progress=False)
    assert stats["removed"] == {"exact_dedup": 3, "near_dedup": 3} and stats["tasks"] > 3
    return src, root / "local", stats


def test_ray_engine_writes_the_local_engines_bytes(ray_session, local, tmp_path, run_main):
    src, ref, ref_stats = local
    out = tmp_path / "ray"
    rc, stdout, err = run_main("prepare", src, "--out", out, "--engine", "ray", "--workers", "2", "--vocab-size",
                               "300", "--task-bytes", "60000", "--val-fraction", "0.2", "--no-progress")
    assert rc == 0, err
    assert _files(out) == _files(ref)  # shards, tokenizer, manifest: byte for byte
    stats = json.loads((out / pipeline.STATS).read_text())
    assert stats["engine"] == "ray" and ref_stats["engine"] == "local"
    assert {k: v for k, v in stats.items() if k not in TIMING} == {k: v for k, v in ref_stats.items() if k not in TIMING}
    rc, stdout, _ = run_main("data", "verify", out)
    assert rc == 0 and "ok" in stdout


def test_a_killed_worker_is_retried_and_the_output_is_unchanged(ray_session, local, tmp_path, monkeypatch):
    src, ref, _ = local
    marker = tmp_path / "fired"
    # The worker that starts tokenizing task 1 SIGKILLs itself, once (the marker stops the retry).
    monkeypatch.setenv(stages.FAULT, f"kill:stage=tokenize:task=1:marker={marker}")
    stats = pipeline.run_prepare(_cfg(src), tmp_path / "out", workers=2, progress=False, engine="ray")
    assert marker.exists()  # the fault fired: a worker died mid-run
    assert _files(tmp_path / "out") == _files(ref)
    assert stats["documents_out"] == len(MODULES)
    assert shards.verify(tmp_path / "out") == []
