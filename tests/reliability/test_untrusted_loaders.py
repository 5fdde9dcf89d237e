"""scaletrain.untrusted: each defence against a planted or tampered checkpoint, one test each, with
a real payload (unpickling it creates a marker file) and checksums rewritten to match, as an
attacker who controls the folder would. The CLI-level suite over every command is test_hostile.py.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import shutil
import warnings

import pytest
import torch
import torch.distributed.checkpoint as dcp

from scaletrain.errors import RunFailure, UserError
from scaletrain.parallel.state import train_state
from scaletrain.train import checkpoint as ckpt
from scaletrain.untrusted import checkpoint as untrusted_dcp
from scaletrain.untrusted.files import inside, read_json
from scaletrain.untrusted.pickles import read_metadata
from scaletrain.untrusted.weights import build_checked, load_weights, save_weights

from planted import Payload
from test_untrusted import _model_and_optimizer, _rehash

SPEC = {"name": "tiny", "args": {"width": 8}}


class NamedGlobal:
    """Pickles as a call of `module.name(*args)` without importing it here."""

    def __init__(self, module, name, args=()):
        self.module, self.name, self.args = module, name, args

    def __reduce__(self):
        import importlib

        return (getattr(importlib.import_module(self.module), self.name), self.args)


@pytest.fixture
def saved(tmp_path):
    model, opt = _model_and_optimizer()
    path = ckpt.save_checkpoint(tmp_path / "checkpoints", 1, model, opt, {"position": 8, "model": SPEC}, keep_last=5)
    return path


def _replant(path, state):
    for p in path.glob("*.distcp"):
        p.unlink()
    (path / ".metadata").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(state, checkpoint_id=str(path))
    _rehash(path)


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_a_bytes_entry_where_a_model_tensor_belongs_is_refused_by_resume_and_by_compress(saved, tmp_path):
    """The finding: DCP's default planner would torch.load(weights_only=False) such an entry."""
    marker = tmp_path / "pwned"
    model, opt = _model_and_optimizer()
    state = train_state(model, opt)
    state["model"]["0.weight"] = Payload(marker)
    _replant(saved, state)
    before = _snapshot(saved)
    assert ckpt.verify_checkpoint(saved) == []  # well-formed: the refusal comes at load, by destination
    fresh, fresh_opt = _model_and_optimizer(1)
    with pytest.raises(UserError, match=r"item model\.0\.weight is stored as pickled bytes where a tensor belongs"):
        ckpt.load_checkpoint(saved, fresh, fresh_opt)
    from scaletrain.compress.load import load_checkpoint_into

    with pytest.raises(UserError, match="pickled bytes where a tensor belongs"):
        load_checkpoint_into(_model_and_optimizer(1)[0], saved)
    assert not marker.exists() and _snapshot(saved) == before


def test_model_only_loads_refuse_every_bytes_entry(saved, tmp_path):
    """compress/eval read only the model: a bytes entry is never read, even for a non-tensor key."""
    state = {"model": {"0.weight": torch.zeros(8, 4), "extra": {"x": 1}}}
    md = read_metadata(saved / ".metadata")
    with pytest.raises(UserError, match="pickled bytes"):
        untrusted_dcp.check_matches(md, {"optim": {"param_groups": [{"lr": 1.0}]}} | state, saved, allow_bytes=False)


def test_a_non_allowlisted_dcp_class_in_metadata_is_refused_before_it_is_built(saved):
    """The finding: the old screen built any class under torch.distributed.checkpoint, e.g.
    _AsyncCheckpointProcess, which starts a child process that connects where the pickle says."""
    md_file = saved / ".metadata"
    planted = NamedGlobal("torch.distributed.checkpoint.state_dict_saver", "AsyncCheckpointerType", ("thread",))
    md_file.write_bytes(pickle.dumps(planted))
    _rehash(saved)
    problems = ckpt.verify_checkpoint(saved)
    assert problems and "refused: global torch.distributed.checkpoint.state_dict_saver.AsyncCheckpointerType" in problems[0]
    module, name = b"torch.distributed.checkpoint._async_process_executor", b"_AsyncCheckpointProcess"
    # protocol 4: push both names, STACK_GLOBAL, an empty tuple, NEWOBJ (cls.__new__(cls)), STOP
    raw = (b"\x80\x04\x8c" + bytes([len(module)]) + module + b"\x8c" + bytes([len(name)]) + name
           + b"\x93)\x81.")
    md_file.write_bytes(raw)
    _rehash(saved)
    with pytest.raises(UserError, match="_AsyncCheckpointProcess is not checkpoint metadata"):
        read_metadata(md_file)
    assert multiprocessing.active_children() == []


@pytest.mark.parametrize("where", ["../outside.distcp", "/etc/passwd", "sub/../../x"])
def test_metadata_naming_a_file_outside_the_checkpoint_is_refused(saved, where):
    md = read_metadata(saved / ".metadata")
    for info in md.storage_data.values():
        info.relative_path = where
    (saved / ".metadata").write_bytes(pickle.dumps(md))
    _rehash(saved)
    problems = ckpt.verify_checkpoint(saved)
    assert problems and "outside its folder" in problems[0] and repr(where) in problems[0]


def test_metadata_whose_byte_ranges_leave_the_data_file_is_refused(saved):
    md = read_metadata(saved / ".metadata")
    next(iter(md.storage_data.values())).length = 1 << 40
    (saved / ".metadata").write_bytes(pickle.dumps(md))
    _rehash(saved)
    assert "outside" in ckpt.verify_checkpoint(saved)[0]


def test_metadata_whose_byte_ranges_overlap_is_refused(saved):
    """A lying length that still fits the file (and might even decode) overlaps the next item."""
    md = read_metadata(saved / ".metadata")
    first = min(md.storage_data.values(), key=lambda info: info.offset)
    first.length += 1
    (saved / ".metadata").write_bytes(pickle.dumps(md))
    _rehash(saved)
    assert "overlap" in ckpt.verify_checkpoint(saved)[0]


@pytest.mark.parametrize("name", ["../../trainer.json", "/etc/hostname"])
def test_checksums_naming_a_file_outside_the_checkpoint_are_refused(saved, name):
    sums = json.loads((saved / "checksums.json").read_text())
    sums[name] = "0" * 32
    (saved / "checksums.json").write_text(json.dumps(sums))
    problems = ckpt.verify_checkpoint(saved)
    assert problems and "outside its folder" in problems[0]


@pytest.mark.parametrize("edit, key", [
    ({"position": "8"}, "'position' must be int"),
    ({"position": -1}, "'position' is -1"),
    ({"step": 1.5}, "'step' must be int"),
    ({"lr_scale": 7.0}, "'lr_scale' must be in (0, 1]"),
    ({"surprise": 1}, "unknown key 'surprise'"),
    ({"rng": {"numpy": [], "python": []}}, "'rng' is not"),
    ({"evals": [1, 2]}, "'evals' must list"),
])
def test_a_tampered_trainer_state_is_refused_naming_its_key(saved, edit, key):
    state = json.loads((saved / "trainer.json").read_text())
    state.update(edit)
    (saved / "trainer.json").write_text(json.dumps(state))
    _rehash(saved)
    problems = ckpt.verify_checkpoint(saved)
    assert problems and key in problems[0], problems


def test_a_checkpoint_of_another_architecture_is_refused_naming_the_key(saved):
    model, opt = _model_and_optimizer(1)
    with pytest.raises(UserError, match=r"model\.width: 8 in the checkpoint, 16 here"):
        ckpt.load_checkpoint(saved, model, opt, model_spec={"name": "tiny", "args": {"width": 16}})
    other, other_opt = _model_and_optimizer(1, width=16)  # no recorded spec: shapes are compared
    with pytest.raises(UserError, match=r"does not match this model: 9 shape\(s\) differ \(model\.0\.weight: \[8, 4\]"):
        ckpt.load_checkpoint(saved, other, other_opt)


def test_a_checkpoint_with_weights_the_model_lacks_is_refused(saved):
    smaller = torch.nn.Sequential(torch.nn.Linear(4, 8))
    with pytest.raises(UserError, match=r"key\(s\) this model lacks \(model\.2\.weight"):
        ckpt.load_checkpoint(saved, smaller, torch.optim.AdamW(smaller.parameters()))


def test_io_errors_while_loading_keep_their_message_and_are_not_called_a_mismatch(saved, monkeypatch):
    def broken(self, plan, planner):
        raise OSError(5, "Input/output error", str(saved / "__0_0.distcp"))

    monkeypatch.setattr(untrusted_dcp.SafeReader, "read_data", broken)
    model, opt = _model_and_optimizer(1)
    with pytest.raises(RunFailure, match="cannot be read: Input/output error"):
        ckpt.load_checkpoint(saved, model, opt)


def test_safetensors_files_are_checked_and_record_their_model(tmp_path):
    model = torch.nn.Linear(4, 3)
    path = tmp_path / "model.safetensors"
    save_weights(model, path, spec=SPEC)
    other = torch.nn.Linear(4, 3)
    meta = load_weights(other, path, spec=SPEC)
    assert meta["format"] == "pt" and torch.equal(other.weight, model.weight)
    with pytest.raises(UserError, match=r"made for another model.*model\.width: 8 in the weights file, 9 here"):
        load_weights(other, path, spec={"name": "tiny", "args": {"width": 9}})
    with pytest.raises(UserError, match=r"weight: \[3, 4\] in the file, \[5, 4\] in the model"):
        load_weights(torch.nn.Linear(4, 5), path)
    data = path.read_bytes()
    for bad in (data[: len(data) // 2], os.urandom(64), (10**12).to_bytes(8, "little") + b"{}", b""):
        path.write_bytes(bad)
        with pytest.raises(UserError, match="not a readable safetensors file"):
            load_weights(other, path)


def test_a_model_description_too_large_for_memory_is_refused_before_allocation():
    with pytest.raises(UserError, match="more than this machine's memory"):
        build_checked(lambda: torch.nn.Linear(1 << 20, 1 << 20), "model_config.json")


def test_json_readers_and_paths(tmp_path):
    (tmp_path / "a.json").write_text("[" * 100_000)
    with pytest.raises(UserError, match="nested deeper than"):
        read_json(tmp_path / "a.json", what="x")
    (tmp_path / "a.json").write_text('{"x": NaN}')
    with pytest.raises(UserError, match="non-standard number NaN"):
        read_json(tmp_path / "a.json", what="x")
    (tmp_path / "a.json").write_bytes(b"\xff\xfe")
    with pytest.raises(UserError, match="not UTF-8"):
        read_json(tmp_path / "a.json", what="x")
    (tmp_path / "a.json").write_text("[1]")
    with pytest.raises(UserError, match="a list where x is a JSON object"):
        read_json(tmp_path / "a.json", what="x")
    (tmp_path / "link").symlink_to("/etc")
    for bad in ("../x", "/etc/passwd", "link/passwd", "a\\..\\b", ""):
        with pytest.raises(UserError, match="outside its folder|not a file name"):
            inside(tmp_path, bad, what="a manifest")
    assert inside(tmp_path, "sub/file.bin", what="a manifest") == tmp_path / "sub" / "file.bin"
