"""Item 7: files that carry a pickle payload are refused without running it; config paths cannot
make a run write outside its folder.

The payload is real: unpickling it opens (creates) a marker file. The attacker controls the whole
checkpoint folder, so checksums.json is rewritten to match: the checksums prove integrity, not
trust, and the refusal must come from never unpickling anything but plain data.
"""

from __future__ import annotations

import json
import pickle
import shutil

import pytest
import torch

from scaletrain.errors import UserError
from scaletrain.parallel.state import train_state
from scaletrain.train import checkpoint as ckpt

import torch.distributed.checkpoint as dcp

from planted import Payload  # unpickling it creates a marker file


def _model_and_optimizer(seed=0, width=8):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, width), torch.nn.ReLU(), torch.nn.Linear(width, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    opt.zero_grad()
    return model, opt


def _rehash(folder):
    """What an attacker does after planting a payload: make the checksums match again."""
    sums = {p.name: ckpt._hash_file(p) for p in sorted(folder.iterdir())
            if p.is_file() and p.name != "checksums.json"}
    (folder / "checksums.json").write_text(json.dumps(sums))


@pytest.fixture
def good(tmp_path):
    model, opt = _model_and_optimizer()
    root = tmp_path / "checkpoints"
    ckpt.save_checkpoint(root, 1, model, opt, {"position": 8}, keep_last=5)
    return root, model, opt


def _assert_refused(path, marker, fresh_model_opt):
    model, opt = fresh_model_opt
    with pytest.raises(UserError) as info:
        ckpt.load_checkpoint(path, model, opt)
    assert not marker.exists(), "the payload ran"
    return str(info.value)


def test_pickle_payload_in_dcp_metadata_is_refused(good, tmp_path):
    root, model, opt = good
    marker = tmp_path / "pwned-metadata"
    bad = root / "step_00000002"
    shutil.copytree(root / "step_00000001", bad)
    (bad / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    _rehash(bad)
    assert ckpt.verify_checkpoint(bad) != []  # the integrity check itself refuses it
    assert not marker.exists()
    message = _assert_refused(bad, marker, _model_and_optimizer(1))
    assert ".metadata" in message and "io.open" in message
    # resume=auto falls back to the previous good checkpoint and says why.
    chosen, skipped = ckpt.resolve_resume("auto", tmp_path)
    assert chosen == root / "step_00000001"
    assert skipped and "step_00000002" in skipped[0] and ".metadata" in skipped[0]
    assert not marker.exists()


def test_pickle_payload_in_a_dcp_bytes_item_is_refused(good, tmp_path):
    """DCP stores non-tensor values (the optimizer's param_groups) as pickled bytes and its default
    planner reads them with torch.load(weights_only=False): a planted object would run."""
    root, model, opt = good
    marker = tmp_path / "pwned-bytes"
    bad = root / "step_00000002"
    shutil.copytree(root / "step_00000001", bad)
    for p in bad.glob("*.distcp"):
        p.unlink()
    (bad / ".metadata").unlink()
    state = train_state(model, opt)
    state["optim"]["param_groups"][0]["lr"] = Payload(marker)
    dcp.save(state, checkpoint_id=str(bad))
    _rehash(bad)
    assert not marker.exists()
    message = _assert_refused(bad, marker, _model_and_optimizer(1))
    assert "refused" in message


def test_pickle_payload_in_rng_state_is_refused(good, tmp_path):
    root, _, _ = good
    marker = tmp_path / "pwned-rng"
    bad = root / "step_00000002"
    shutil.copytree(root / "step_00000001", bad)
    (bad / "rng.safetensors").unlink()  # checkpoints before rng.safetensors kept torch's pickle
    torch.save({"torch": Payload(marker)}, bad / "rng.pt")
    _rehash(bad)
    message = _assert_refused(bad, marker, _model_and_optimizer(1))
    assert "rng.pt" in message


def test_a_good_checkpoint_still_loads_exactly(good):
    root, model, opt = good
    other, other_opt = _model_and_optimizer(1)
    state = ckpt.load_checkpoint(root / "step_00000001", other, other_opt)
    assert state["position"] == 8
    for a, b in zip(model.parameters(), other.parameters()):
        assert torch.equal(a, b)
    assert other_opt.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


@pytest.mark.parametrize("name", ["../../escaped", "a/b", "/abs/path"])
def test_a_config_name_cannot_place_the_run_outside_runs(tmp_path, monkeypatch, cache_dir, name):
    """`name` becomes the default folder runs/<name>-<time>: a separator would write anywhere."""
    from conftest import FAST, run_main

    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    code, out, err = run_main("train", "gpt-tiny", *FAST, f"data.cache_dir={cache_dir}", f"name={name}")
    assert code == 2 and err.startswith(f"error: name: {name!r}") and "path separator" in err
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["a", "a/b"]


def _prepared(cache_dir):
    from harness import build_task

    build_task(cache_dir, [])  # prepares gpt-tiny's data in the session cache if not yet there
    from pathlib import Path

    return next(p for p in Path(cache_dir).iterdir() if (p / "manifest.json").is_file())


def test_data_files_carrying_a_pickle_payload_are_never_unpickled(cache_dir, tmp_path):
    """Shards and IDX files are raw numbers, read with os.pread / np.frombuffer: a payload in them is
    refused as data (checksum, size, vocabulary or IDX header) and never run."""
    from conftest import FAST, run_main
    from scaletrain.data import shards

    marker = tmp_path / "pwned-data"
    payload = pickle.dumps(Payload(marker))
    data = tmp_path / "data"
    shutil.copytree(_prepared(cache_dir), data)
    victim = data / "train-00000_00000.bin"
    size = victim.stat().st_size
    victim.write_bytes((payload * (size // len(payload) + 1))[:size])  # same size: only content differs
    assert any("train-00000_00000.bin: checksum mismatch" in p for p in shards.verify(data))
    # An attacker who also rewrites the manifest's checksum: the bytes are still only token ids.
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["splits"]["train"]["files"][0]["xxh3_128"]["bin"] = shards.file_xxh3(victim)
    shards.write_manifest(data, manifest)
    with pytest.raises(UserError, match="outside the vocabulary"):
        shards.TokenShards(data, "train", verify=True)
    mnist = tmp_path / "mnist"
    mnist.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (mnist / name).write_bytes(payload)
    code, _, err = run_main("train", "mlp-digits", *FAST, f"data.path={mnist}", f"train.run_dir={tmp_path / 'run'}")
    assert code == 2 and err.startswith("error: ") and "idx" in err.lower()
    assert not marker.exists()
