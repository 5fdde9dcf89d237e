"""Planted folders: what an attacker (or an accident) leaves in a copy of a trained run, its
checkpoint or a prepared-data folder, and the loaders that read them (issue 14).

A planter is a function of a `Site` (the scratch folder of one case) that edits the copies there.
The payloads are real: unpickling one creates `site.marker` (a file, or for the DCP-class payload a
folder). The attacker controls the whole folder, so checksums.json and the manifest's own checksum
are rewritten to match: checksums prove integrity, not trust. `PAYLOADS` x `LOADERS` (each payload
against every loader that reads its file) is the planted half of tests/reliability/hostile_cases.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

STEP = "step_00000002"  # the trained run's only checkpoint
# Flags that keep a wrongly accepted compress short (and offline).
COMPRESS = ("--method", "int8-dynamic", "--eval-batches", "1", "--latency-rounds", "1", "--no-onnx")

# ---- the payloads --------------------------------------------------------------------------------

class Payload:
    """Unpickling this calls open(marker, "w"): code from the file runs."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))

    def __deepcopy__(self, memo):  # dcp.save copies the state dict; keep the payload unrun
        return self


class DCPClassPayload:
    """A pickle that builds a class of torch.distributed.checkpoint that is not checkpoint metadata:
    `_ReplicationStager(storage_dir=marker)` creates the folder `marker` in its constructor (the
    same screen let `_AsyncCheckpointProcess` start a process that connects anywhere)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        from torch.distributed.checkpoint.staging import _ReplicationStager

        return (_ReplicationStager, (None, None, None, self.marker))


@dataclass
class Site:
    """Where a case runs: the scratch root and the paths planters and argv refer to."""

    root: Path

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def ckpt(self) -> Path:
        return self.run / "checkpoints" / STEP

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def marker(self) -> Path:
        return self.root / "pwned"

    @property
    def outside(self) -> Path:
        return self.root / "outside"


def _hash(path: Path) -> str:
    from scaletrain.train.checkpoint import _hash_file

    return _hash_file(path)


def rehash(site: Site, extra: dict | None = None) -> None:
    """What an attacker does after planting: checksums.json matches every file again."""
    folder = site.ckpt
    sums = {p.name: _hash(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != "checksums.json"}
    sums.update(extra or {})
    (folder / "checksums.json").write_text(json.dumps(sums, indent=1))


def _trusted_state(folder: Path) -> dict:
    """The checkpoint's full state as plain objects (our own fixture: read with DCP's defaults)."""
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _load_state_dict_from_keys(checkpoint_id=str(folder))


def _resave(site: Site, state: dict) -> None:
    import torch.distributed.checkpoint as dcp

    for p in list(site.ckpt.iterdir()):
        if p.name == ".metadata" or p.suffix == ".distcp":
            p.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(state, checkpoint_id=str(site.ckpt))
    rehash(site)


def metadata_pickle(site: Site) -> None:
    """(i) DCP's .metadata is a pickle whose __reduce__ runs open()."""
    (site.ckpt / ".metadata").write_bytes(pickle.dumps(Payload(site.marker)))
    rehash(site)


def bytes_for_tensor(site: Site) -> None:
    """(ii) a bytes entry where a model tensor belongs: DCP's default planner would torch.load it
    with weights_only=False."""
    state = _trusted_state(site.ckpt)
    state["model"]["lm_head.weight"] = Payload(site.marker)
    _resave(site, state)


def bytes_in_param_groups(site: Site) -> None:
    """(iii) a payload inside a legitimate bytes entry (the optimizer's param_groups)."""
    state = _trusted_state(site.ckpt)
    state["optim"]["param_groups"][0]["lr"] = Payload(site.marker)
    _resave(site, state)


def rng_pickle(site: Site) -> None:
    """(iv) rng.pt holds a pickled object instead of tensors (newer checkpoints keep the RNG state
    in rng.safetensors and read an older one's rng.pt: the planted folder has only rng.pt)."""
    import torch

    (site.ckpt / "rng.safetensors").unlink(missing_ok=True)
    torch.save({"torch": Payload(site.marker)}, site.ckpt / "rng.pt")
    rehash(site)


def rng_file(folder: Path) -> str:
    """The checkpoint's RNG file: rng.safetensors, or rng.pt in checkpoints written before it."""
    return "rng.safetensors" if (folder / "rng.safetensors").exists() else "rng.pt"


def metadata_dcp_class(site: Site) -> None:
    """(v) .metadata builds a torch.distributed.checkpoint class that is not a metadata dataclass."""
    (site.ckpt / ".metadata").write_bytes(pickle.dumps(DCPClassPayload(site.marker)))
    rehash(site)


def _moved_storage(site: Site, target: str, copy_to: Path) -> None:
    """Every storage entry of .metadata points at `target`; the data file is moved to `copy_to`, so
    a loader that follows the path loads the weights (silently) from outside the folder."""
    meta = pickle.loads((site.ckpt / ".metadata").read_bytes())
    meta.storage_data = {k: dataclasses.replace(v, relative_path=target) for k, v in meta.storage_data.items()}
    (site.ckpt / ".metadata").write_bytes(pickle.dumps(meta))
    copy_to.parent.mkdir(parents=True, exist_ok=True)
    for p in site.ckpt.glob("*.distcp"):
        os.replace(p, copy_to)
    rehash(site)


def metadata_path_parent(site: Site) -> None:
    """(vi) .metadata's storage path is ../stolen.distcp (beside the checkpoint folder)."""
    _moved_storage(site, "../stolen.distcp", site.ckpt.parent / "stolen.distcp")


def metadata_path_absolute(site: Site) -> None:
    """(vi) .metadata's storage path is an absolute path outside the run."""
    target = site.outside / "stolen.distcp"
    _moved_storage(site, str(target), target)


def checksums_path_parent(site: Site) -> None:
    """(vi) checksums.json names ../stolen.txt (with its right hash): a check that follows it reads
    outside the folder (an oracle for any file's content)."""
    stolen = site.ckpt.parent / "stolen.txt"
    stolen.write_text("secret\n")
    rehash(site, {"../stolen.txt": _hash(stolen)})


def checksums_path_absolute(site: Site) -> None:
    """(vi) checksums.json names /etc/passwd (with its right hash)."""
    rehash(site, {"/etc/passwd": _hash(Path("/etc/passwd"))})


def deep_json(name: str) -> Callable[[Site], None]:
    """A JSON file of the folder nested 100,000 levels deep (json.loads would hit RecursionError)."""

    def plant(site: Site) -> None:
        folder = {"trainer.json": site.ckpt, "checksums.json": site.ckpt, "model_config.json": site.run,
                  "summary.json": site.run, "manifest.json": site.data}[name]
        (folder / name).write_text("[" * 100_000 + "]" * 100_000)
        if folder == site.ckpt and name != "checksums.json":
            rehash(site)

    plant.__name__ = f"deep_{name.replace('.', '_')}"
    return plant


def _rewrite_safetensors(site: Site, change: Callable[[bytes, bytes], bytes]) -> None:
    path = site.run / "model.safetensors"
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    path.write_bytes(change(raw[8:8 + n], raw[8 + n:]))


def _with_header(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def safetensors_huge_header(site: Site) -> None:
    """(vii) the declared header length is 2**63 - 1."""
    _rewrite_safetensors(site, lambda h, d: struct.pack("<Q", 2**63 - 1) + h + d)


def safetensors_header_past_end(site: Site) -> None:
    """(vii) the declared header length runs past the end of the file."""
    _rewrite_safetensors(site, lambda h, d: struct.pack("<Q", len(h) + len(d) + 4096) + h + d)


def safetensors_offsets_past_end(site: Site) -> None:
    """(vii) a tensor's data_offsets point far past the end of the file."""
    def change(h, d):
        header = json.loads(h)
        name = next(k for k in header if k != "__metadata__")
        header[name]["data_offsets"] = [0, 10**12]
        return _with_header(header, d)
    _rewrite_safetensors(site, change)


def safetensors_offsets_reversed(site: Site) -> None:
    """(vii) a tensor's data_offsets end before they begin."""
    def change(h, d):
        header = json.loads(h)
        name = next(k for k in header if k != "__metadata__")
        begin, end = header[name]["data_offsets"]
        header[name]["data_offsets"] = [end, begin]
        return _with_header(header, d)
    _rewrite_safetensors(site, change)


def safetensors_deep_header(site: Site) -> None:
    """(vii) the header is JSON nested 100,000 levels deep."""
    _rewrite_safetensors(site, lambda h, d: _with_header_bytes(b"[" * 100_000 + b"]" * 100_000, d))


def _with_header_bytes(text: bytes, data: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text + data


def yaml_bomb_config(site: Site) -> None:
    """A billion-laughs alias bomb in the run's config.yaml (where optim.lr belongs)."""
    (site.run / "config.yaml").write_text(billion_laughs("optim", "lr", (site.run / "config.yaml").read_bytes()))


def manifest_changed(site: Site, change: Callable[[dict], None]) -> None:
    from scaletrain.data import shards

    manifest = json.loads((site.data / "manifest.json").read_text())
    change(manifest)
    shards.write_manifest(site.data, manifest)  # re-signed: the self-checksum matches again


def manifest_path_parent(site: Site) -> None:
    """(vi) the manifest names ../stolen.bin: the shard moved out, beside the folder."""
    os.replace(site.data / "train-00000_00000.bin", site.root / "stolen.bin")
    manifest_changed(site, lambda m: m["splits"]["train"]["files"][0].update(bin="../stolen.bin"))


def manifest_path_absolute(site: Site) -> None:
    """(vi) the manifest names an absolute path outside the folder."""
    site.outside.mkdir(exist_ok=True)
    os.replace(site.data / "train-00000_00000.idx", site.outside / "stolen.idx")
    manifest_changed(site, lambda m: m["splits"]["train"]["files"][0].update(idx=str(site.outside / "stolen.idx")))


def manifest_etc_passwd(site: Site) -> None:
    """(vi) the manifest names /etc/passwd as a shard."""
    manifest_changed(site, lambda m: m["splits"]["val"]["files"][0].update(bin="/etc/passwd"))


def shard_symlink_out(site: Site) -> None:
    """(vi) a shard of the folder is a symlink to a file outside it."""
    site.outside.mkdir(exist_ok=True)
    os.replace(site.data / "train-00000_00000.bin", site.outside / "train-00000_00000.bin")
    (site.data / "train-00000_00000.bin").symlink_to(site.outside / "train-00000_00000.bin")


def drop_safetensors(site: Site) -> None:
    """A run stopped before its export: compress falls back to the last checkpoint."""
    (site.run / "model.safetensors").unlink()


# ---- the loaders -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Loader:
    name: str
    argv: tuple[str, ...]
    needs: str  # "run" or "data"
    reads: frozenset  # what it reads: "checkpoint", "optimizer", "trainer", "safetensors", "model_config", "config", "summary", "manifest"
    setup: tuple = ()  # planters applied before the payload


LOADERS = [
    Loader("train resume by path", ("train", "gpt-tiny", "train.run_dir={dir}/new-run", "train.resume={ckpt}"), "run",
           frozenset({"checkpoint", "optimizer", "trainer"})),
    Loader("train resume=auto", ("train", "gpt-tiny", "train.run_dir={run}", "train.resume=auto"), "run",
           frozenset({"checkpoint", "optimizer", "trainer"})),
    Loader("compress (no model.safetensors)", ("compress", "{run}", "--out", "{dir}/c", *COMPRESS), "run",
           frozenset({"checkpoint", "model_config", "config"}), (drop_safetensors,)),
    Loader("compress --checkpoint", ("compress", "{run}", "--checkpoint", "{ckpt}", "--out", "{dir}/c", *COMPRESS), "run",
           frozenset({"checkpoint", "model_config", "config"})),
    Loader("compress", ("compress", "{run}", "--out", "{dir}/c", *COMPRESS), "run",
           frozenset({"safetensors", "model_config", "config"})),
    Loader("eval", ("eval", "{run}", "--batches", "1"), "run", frozenset({"safetensors", "model_config", "config"})),
    Loader("generate", ("generate", "{run}", "--tokens", "1"), "run", frozenset({"safetensors", "model_config", "config"})),
    Loader("doctor", ("doctor", "{run}"), "run", frozenset({"summary", "config"})),
    Loader("export", ("export", "{run}", "--format", "hf", "--out", "{dir}/e"), "run",
           frozenset({"safetensors", "model_config"})),
    Loader("data verify", ("data", "verify", "{data}"), "data", frozenset({"manifest"})),
    Loader("data inspect", ("data", "inspect", "{data}"), "data", frozenset({"manifest"})),
    Loader("train data.mixture", ("train", "gpt-tiny", "data.path=", "data.mixture=[{path: '{data}'}]",
                                  "train.run_dir={dir}/new-run"), "data", frozenset({"manifest"})),
    Loader("prepare --merge", ("prepare", "--merge", "{data}", "--out", "{dir}/merged"), "data", frozenset({"manifest"})),
]


@dataclass(frozen=True)
class Plant:
    name: str
    planter: Callable[[Site], None]
    reads: str  # the loader must read this for the payload to apply
    expected: str | tuple[str, ...]  # in the error line: the file, entry or path at fault (any one)
    subprocess: bool = False  # may expand without bound in a broken loader: run it fenced


PAYLOADS = [
    Plant("(i) pickle payload in .metadata", metadata_pickle, "checkpoint", ".metadata"),
    Plant("(ii) bytes entry where a model tensor belongs", bytes_for_tensor, "checkpoint", "lm_head.weight"),
    Plant("(iii) payload inside the optimizer's param_groups", bytes_in_param_groups, "optimizer", "param_groups"),
    Plant("(iv) pickle payload in rng.pt", rng_pickle, "checkpoint", "rng.pt"),
    Plant("(v) .metadata builds a non-metadata DCP class", metadata_dcp_class, "checkpoint", ".metadata"),
    Plant("(vi) .metadata storage path ../stolen.distcp", metadata_path_parent, "checkpoint", "stolen.distcp"),
    Plant("(vi) .metadata storage path absolute", metadata_path_absolute, "checkpoint", "stolen.distcp"),
    Plant("(vi) checksums.json names ../stolen.txt", checksums_path_parent, "checkpoint", "stolen.txt"),
    Plant("(vi) checksums.json names /etc/passwd", checksums_path_absolute, "checkpoint", "/etc/passwd"),
    Plant("checksums.json nested 100,000 deep", deep_json("checksums.json"), "checkpoint", "checksums.json"),
    Plant("trainer.json nested 100,000 deep", deep_json("trainer.json"), "trainer", "trainer.json"),
    Plant("(vii) safetensors header length 2**63-1", safetensors_huge_header, "safetensors", "model.safetensors"),
    Plant("(vii) safetensors header past the end", safetensors_header_past_end, "safetensors", "model.safetensors"),
    Plant("(vii) safetensors offsets past the end", safetensors_offsets_past_end, "safetensors", "model.safetensors"),
    Plant("(vii) safetensors offsets reversed", safetensors_offsets_reversed, "safetensors", "model.safetensors"),
    Plant("(vii) safetensors header nested 100,000 deep", safetensors_deep_header, "safetensors", "model.safetensors"),
    Plant("model_config.json nested 100,000 deep", deep_json("model_config.json"), "model_config", "model_config.json"),
    Plant("summary.json nested 100,000 deep", deep_json("summary.json"), "summary", "summary.json"),
    Plant("config.yaml alias bomb", yaml_bomb_config, "config", ("config.yaml", "optim.lr"), subprocess=True),
    Plant("(vi) manifest names ../stolen.bin", manifest_path_parent, "manifest", "stolen.bin"),
    Plant("(vi) manifest names an absolute path", manifest_path_absolute, "manifest", "stolen.idx"),
    Plant("(vi) manifest names /etc/passwd", manifest_etc_passwd, "manifest", "/etc/passwd"),
    Plant("(vi) shard is a symlink leading out", shard_symlink_out, "manifest", "train-00000_00000.bin"),
    Plant("manifest.json nested 100,000 deep", deep_json("manifest.json"), "manifest", "manifest.json"),
]


# ---- YAML bombs --------------------------------------------------------------------------------

def alias_bomb(levels: int = 10) -> str:
    """One flow-style YAML value that expands to 9**levels items through aliases (a few hundred
    bytes): each level is a list of nine aliases of the one before, all inside the value itself.
    Printed whole, 9**10 items need ~25 GB: a reader that expands it ends in a MemoryError under
    run_subprocess's limit, or in its timeout."""
    parts = ["&a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        parts.append(f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "[" + ", ".join(parts) + "]"


def billion_laughs(section: str, key: str, base: bytes | None = None) -> str:
    """A config file whose `section.key` is the alias bomb (in a copy of `base`, else alone)."""
    import yaml

    raw = yaml.safe_load(base) if base else {}
    raw.setdefault(section, {})[key] = "BOMB"
    return yaml.safe_dump(raw, sort_keys=False).replace("BOMB", alias_bomb())


# ---- edits of runs, checkpoints and prepared folders ----------------------------------------------

def tokenizer_of_vocab(size: int) -> bytes:
    from scaletrain.data.tokenizer import train_tokenizer

    text = " ".join(f"w{i}x{i * 7}" for i in range(4000))
    return train_tokenizer([text], size).to_str().encode()


def state_change(change: Callable[[dict], None], name: str = "trainer.json") -> Callable[[Site], None]:
    def plant(site: Site) -> None:
        path = site.ckpt / name
        doc = json.loads(path.read_text())
        new = change(doc)  # a new document, or None when `change` edited `doc` in place
        path.write_text(json.dumps(doc if new is None else new))
        if name != "checksums.json":
            rehash(site)
    plant.__name__ = f"tamper_{name}"
    return plant


def raw_file(name: str, text: str) -> Callable[[Site], None]:
    """Replace a checkpoint file with `text` and make the checksums match."""
    def plant(site: Site) -> None:
        (site.ckpt / name).write_text(text)
        if name != "checksums.json":
            rehash(site)
    plant.__name__ = f"raw_{name}"
    return plant


def bitflip_checkpoint(site: Site) -> None:
    path = site.ckpt / "__0_0.distcp"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def other_model_checkpoint(site: Site) -> None:
    """A complete, intact checkpoint of another model (an MLP) at {dir}/other/checkpoints/step_00000001."""
    import torch

    from scaletrain.train import checkpoint as ckpt

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ckpt.save_checkpoint(site.root / "other" / "checkpoints", 1, model, opt, {"position": 8}, keep_last=5)


def edit_run_config(change: Callable[[dict], None]) -> Callable[[Site], None]:
    def plant(site: Site) -> None:
        import yaml

        cfg = yaml.safe_load((site.run / "config.yaml").read_text())
        change(cfg)
        (site.run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    plant.__name__ = "edit_config_yaml"
    return plant


def edit_model_config(**changes) -> Callable[[Site], None]:
    def plant(site: Site) -> None:
        spec = json.loads((site.run / "model_config.json").read_text())
        spec["args"].update(changes)
        (site.run / "model_config.json").write_text(json.dumps(spec))
    plant.__name__ = "edit_model_config_json"
    return plant


def swap_tokenizer(site: Site) -> None:
    (site.run / "tokenizer.json").write_bytes(tokenizer_of_vocab(2048))


def junk_file(rel: str, content: bytes) -> Callable[[Site], None]:
    def plant(site: Site) -> None:
        (site.root / rel).write_bytes(content)
    plant.__name__ = f"write_{rel.replace('/', '_')}"
    return plant


def offsets_out_of_range(site: Site) -> None:
    """Document offsets that leave the split (same size, so only their values are wrong)."""
    import numpy as np

    from scaletrain.data import shards

    idx = site.data / "train-00000_00000.idx"
    starts = np.fromfile(idx, dtype="<i8")
    starts[1] = 10**12
    idx.write_bytes(starts.astype("<i8").tobytes())
    manifest_changed(site, lambda m: m["splits"]["train"]["files"][0]["xxh3_128"].update(idx=shards.file_xxh3(idx)))


def ids_beyond_vocabulary(site: Site) -> None:
    """A shard whose first document holds ids beyond the vocabulary (re-signed)."""
    import numpy as np

    from scaletrain.data import shards

    path = site.data / "train-00000_00000.bin"
    ids = np.fromfile(path, dtype="<u2")
    ids[:8] = 65000
    path.write_bytes(ids.tobytes())
    manifest_changed(site, lambda m: m["splits"]["train"]["files"][0]["xxh3_128"].update(bin=shards.file_xxh3(path)))


def not_a_run(site: Site) -> None:
    """A folder that holds someone's files, among them names a run also has."""
    folder = site.root / "notes"
    (folder / "tensorboard").mkdir(parents=True)
    (folder / "tensorboard" / "events.out").write_bytes(b"not ours")
    (folder / "metrics.jsonl").write_text('{"experiment": "someone else\'s"}\n')
    (folder / "thesis.txt").write_text("chapter 1\n")
