"""Hostile and careless inputs for every command, enumerated (issue 14): the data of
tests/reliability/test_hostile.py and benchmarks/faults.py.

A `Case` is an argv for `scaletrain`, the text its one `error:` line must contain (the key, file or
value at fault), the files to write first and the planters to apply (tests/reliability/planted.py:
functions that turn a copy of a trained run `{run}` or of a prepared-data folder `{data}` into what
an attacker or an accident leaves). Everything a case touches lives under one scratch folder
(`{dir}`), which must be byte-identical afterwards (contents and mtimes, folders included), with
nothing added; a planted payload's marker `{marker}` must never appear.

`UNTRUSTED` crosses every loader that reads a run, checkpoint or prepared folder with every payload
that applies to what it reads; `CASES` is the rest, grouped by `kind`.
"""

from __future__ import annotations

import io
import os
import resource
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from planted import (COMPRESS, LOADERS, PAYLOADS, STEP, Site, alias_bomb, billion_laughs, bitflip_checkpoint,
                     edit_model_config, edit_run_config, ids_beyond_vocabulary, junk_file, manifest_changed,
                     not_a_run, offsets_out_of_range, other_model_checkpoint, raw_file, state_change, swap_tokenizer)

# Settings of every train case and of the shared trained run (so a resume meets the same config):
# one thread, fp32, no evaluation, sample or TensorBoard until the end, a constant lr.
TRAIN_DEFAULTS = ("train.threads=1", "log.progress=false", "log.sample_tokens=0", "log.tensorboard=false",
                  "train.eval_every=0", "train.final_eval_batches=1", "train.precision=fp32",
                  "schedule.name=constant", "schedule.warmup_steps=0", "train.max_steps=3")


# ---- cases ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    name: str  # unique
    kind: str  # the group it is counted in
    argv: tuple[str, ...]
    expected: str | tuple[str, ...]  # a substring of the one error line (a tuple: any one of them)
    files: tuple[tuple[str, bytes], ...] = ()  # (path under {dir}, content) written first
    plant: tuple[Callable[[Site], None], ...] = ()  # applied after the copies and files
    needs: tuple[str, ...] = ()  # "run": a copy of the trained run at {run}; "data": of the prepared data at {data}
    subprocess: bool = False  # run as `python -m scaletrain` under a memory limit and a timeout
    listing: bool = False  # a command that lists what it found on stdout (data verify)
    marker: bool = False  # a planted payload: {marker} must not appear


def untrusted_cases() -> list[Case]:
    out = []
    for loader in LOADERS:
        for payload in PAYLOADS:
            if payload.reads not in loader.reads:
                continue
            out.append(Case(f"{loader.name} x {payload.name}", "untrusted", loader.argv, payload.expected,
                            plant=(*loader.setup, payload.planter), needs=(loader.needs,),
                            subprocess=payload.subprocess, listing=loader.name == "data verify", marker=True))
    return out


DEEP_YAML = ("[" * 20_000 + "]" * 20_000)
JUNK = bytes(range(256)) * 4


def parquet_bytes(rows: dict) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.table(rows), sink)
    return sink.getvalue()


def tiny_yaml() -> bytes:
    """The gpt-tiny preset as a config file (a case's file differs from it in one place only)."""
    from importlib import resources

    return (resources.files("scaletrain") / "configs" / "gpt-tiny.yaml").read_bytes()


def _t(*overrides: str) -> tuple[str, ...]:
    return ("train", "gpt-tiny", *overrides)


F = "{dir}"
# A 1-layer Llama's config.json (no weights: a model folder may hold a config alone).
HF_CONFIG = (b'{"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 600, "hidden_size": 32, '
             b'"intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4, "max_position_embeddings": 128}')
TEXT = (("in/a.txt", b"some text to prepare. " * 200), ("in/b.txt", b"more text here, and more. " * 200))
PREP_OUT = ("--out", "{dir}/prepared", "--workers", "1", "--no-progress")


def enumerated() -> list[Case]:
    C = Case
    cases = [
        # -- YAML: bombs, nesting, duplicates, binary (config/load.py) --
        C("config file: billion-laughs alias bomb", "yaml", ("train", "{dir}/bomb.yaml"), ("bomb.yaml", "model.n_layer"),
          (("bomb.yaml", billion_laughs("model", "n_layer", tiny_yaml()).encode()),), subprocess=True),
        C("override: billion-laughs alias bomb", "yaml", _t(f"optim.lr={alias_bomb()}"), "optim.lr", subprocess=True),
        C("config file nested 20,000 deep", "yaml", ("train", "{dir}/deep.yaml"), "deep.yaml",
          (("deep.yaml", f"train: {DEEP_YAML}\n".encode()),)),
        C("override nested 20,000 deep", "yaml", _t(f"optim.lr={DEEP_YAML}"), "optim.lr"),
        C("config file: duplicate key", "yaml", ("train", "{dir}/dup.yaml"), "max_steps",
          (("dup.yaml", tiny_yaml().replace(b"  max_steps: 40\n", b"  max_steps: 5\n  max_steps: 6\n")),)),
        C("config file: duplicate section", "yaml", ("train", "{dir}/dup2.yaml"), "optim",
          (("dup2.yaml", tiny_yaml() + b"optim:\n  lr: 0.2\n"),)),
        C("config file: binary", "yaml", ("train", "{dir}/bin.yaml"), "bin.yaml", (("bin.yaml", JUNK),)),
        C("config file: a YAML tag that builds an object", "yaml", ("train", "{dir}/tag.yaml"), "tag.yaml",
          (("tag.yaml", b"train: !!python/object/apply:os.system ['touch pwned']\n"),)),
        C("prepare --config: binary", "yaml", ("prepare", "{dir}/in", *PREP_OUT, "--config", "{dir}/bin.yaml"), "bin.yaml",
          (("bin.yaml", JUNK), *TEXT)),
        C("prepare --config: alias bomb", "yaml", ("prepare", "{dir}/in", *PREP_OUT, "--config", "{dir}/bomb.yaml"),
          ("bomb.yaml", "min_chars"), (("bomb.yaml", billion_laughs("clean", "min_chars").encode()), *TEXT), subprocess=True),
        C("prepare --config: nested 20,000 deep", "yaml", ("prepare", "{dir}/in", *PREP_OUT, "--config", "{dir}/deep.yaml"),
          "deep.yaml", (("deep.yaml", f"clean: {DEEP_YAML}\n".encode()), *TEXT)),
        C("prepare --config: duplicate key", "yaml", ("prepare", "{dir}/in", *PREP_OUT, "--config", "{dir}/dup.yaml"),
          "vocab_size", (("dup.yaml", b"vocab_size: 300\nvocab_size: 400\n"), *TEXT)),
        C("plan: config file nested 20,000 deep", "yaml", ("plan", "{dir}/deep.yaml"), "deep.yaml",
          (("deep.yaml", f"model: {DEEP_YAML}\n".encode()),)),
        C("verify: duplicate key", "yaml", ("verify", "{dir}/dup.yaml", "--steps", "1"), "lr",
          (("dup.yaml", tiny_yaml().replace(b"  lr: 3.0e-3\n", b"  lr: 3.0e-3\n  lr: 0.1\n")),)),
        # -- non-finite and out-of-bounds values (schema.py, CLI flag checks) --
        C("optim.lr=.inf", "values", _t("optim.lr=.inf"), "optim.lr"),
        C("optim.lr=1e400", "values", _t("optim.lr=1e400"), "optim.lr"),
        C("optim.lr=-.inf", "values", _t("optim.lr=-.inf"), "optim.lr"),
        C("optim.weight_decay=.nan", "values", _t("optim.weight_decay=.nan"), "optim.weight_decay"),
        C("train.grad_clip=.inf", "values", _t("train.grad_clip=.inf"), "train.grad_clip"),
        C("guard.spike_factor=.nan", "values", _t("guard.spike_factor=.nan"), "guard.spike_factor"),
        C("non-finite value in a config file", "values", ("train", "{dir}/nan.yaml"), "optim.lr",
          (("nan.yaml", tiny_yaml().replace(b"  lr: 3.0e-3\n", b"  lr: .nan\n")),)),
        C("empty log.sample_prompt", "values", _t("log.sample_prompt=''", "log.sample_tokens=8"), "log.sample_prompt"),
        C("train.seed beyond 64 bits", "values", _t("train.seed=100000000000000000000000"), "train.seed"),
        # Accepted, these would allocate ~256 GB / start more ranks than cores: fenced in a subprocess.
        C("data.seq_len of 10**9", "values", _t("data.seq_len=1000000000"), "data.seq_len", subprocess=True),
        C("parallel.nproc beyond the cores", "values", _t("parallel.strategy=ddp", f"parallel.nproc={(os.cpu_count() or 1) + 1}"),
          "parallel.nproc", subprocess=True),
        C("data.mixture weight .inf", "values", _t("data.path=", "data.mixture=[{path: '{data}', weight: .inf}]"),
          "weight", needs=("data",)),
        C("generate --temperature nan", "values", ("generate", "{run}", "--temperature", "nan"), "--temperature", needs=("run",)),
        C("generate --temperature inf", "values", ("generate", "{run}", "--temperature", "inf"), "--temperature", needs=("run",)),
        C("eval --batches -1", "values", ("eval", "{run}", "--batches", "-1"), "--batches", needs=("run",)),
        C("compress --amount nan", "values", ("compress", "{run}", "--out", "{dir}/c", *COMPRESS[2:], "--method", "prune",
                                              "--amount", "nan"), "--amount", needs=("run",)),
        C("compress --energy inf", "values", ("compress", "{run}", "--out", "{dir}/c", *COMPRESS[2:], "--method", "lowrank",
                                              "--energy", "inf"), "--energy", needs=("run",)),
        C("compress --temperature nan", "values", ("compress", "{run}", "--out", "{dir}/c", *COMPRESS[2:], "--method",
                                                   "distill", "--temperature", "nan"), "--temperature", needs=("run",)),
        C("plan --device-memory nan", "values", ("plan", "gpt-tiny", "--device-memory", "nan"), "--device-memory"),
        C("plan --device-memory inf", "values", ("plan", "gpt-tiny", "--device-memory", "inf"), "--device-memory"),
        C("doctor --device-memory nan", "values", ("doctor", "{run}", "--device-memory", "nan"), "--device-memory",
          needs=("run",)),
        C("doctor --device-memory -1", "values", ("doctor", "{run}", "--device-memory", "-1"), "--device-memory",
          needs=("run",)),
        C("profile: optim.lr=.inf", "values", ("profile", "gpt-tiny", "optim.lr=.inf", "--out", "{dir}/prof"), "optim.lr"),
        C("profile --warmup -1", "values", ("profile", "gpt-tiny", "--warmup", "-1", "--out", "{dir}/prof"), "--warmup"),
        C("verify: optim.lr=nan", "values", ("verify", "gpt-tiny", "optim.lr=.nan", "--steps", "1"), "optim.lr"),
        C("plan: model.n_layer=0", "values", ("plan", "gpt-tiny", "model.n_layer=0"), "model.n_layer"),
        C("bench optim --steps -3", "values", ("bench", "optim", "--steps", "-3", "--out", "{dir}/bench"), "--steps"),
        C("bench optim --optimizers nosuch", "values", ("bench", "optim", "--task", "mlp", "--steps", "1",
                                                        "--optimizers", "nosuch", "--out", "{dir}/bench"), "nosuch"),
        C("data inspect --tokens -5", "values", ("data", "inspect", "{data}", "--tokens", "-5"), "--tokens", needs=("data",)),
        C("data inspect --samples -1", "values", ("data", "inspect", "{data}", "--samples", "-1"), "--samples",
          needs=("data",)),
        C("prepare --val-fraction nan", "values", ("prepare", "{dir}/in", *PREP_OUT, "--val-fraction", "nan"),
          ("--val-fraction", "val_fraction"), TEXT),
        C("prepare --threshold inf", "values", ("prepare", "{dir}/in", *PREP_OUT, "--threshold", "inf"),
          ("--threshold", "threshold"), TEXT),
        C("prepare source weight inf", "values", ("prepare", "{dir}/in@inf", *PREP_OUT), "weight", TEXT),
        C("prepare source weight nan", "values", ("prepare", "{dir}/in@nan", *PREP_OUT), "weight", TEXT),
        C("prepare source weight -1", "values", ("prepare", "{dir}/in@-1", *PREP_OUT), "weight", TEXT),
        C("prepare --max-bytes -1", "values", ("prepare", "{dir}/in", *PREP_OUT, "--max-bytes", "-1"),
          ("--max-bytes", "max_bytes"), TEXT),
        # -- text that is not text --
        C("generate: prompt not UTF-8", "encoding", ("generate", "{run}", "--prompt", "caf\udce9"), "--prompt",
          needs=("run",)),
        # -- paths: outside the folder, a file where a folder belongs, unwritable (cli, train, prepare, verify) --
        C("absolute data.pattern", "paths", _t("data.path={dir}/in", "data.pattern=/etc/*"), "data.pattern", TEXT),
        C("data.pattern climbing out with ..", "paths", _t("data.path={dir}/in", "data.pattern=../*"),
          ("data.pattern", "'../*'"), TEXT),
        C("train.run_dir is a file", "paths", _t("train.run_dir={dir}/afile"), "train.run_dir", (("afile", b"mine\n"),)),
        C("train.resume is a file", "paths", _t("train.resume={dir}/afile", "train.run_dir={dir}/new-run"), "afile",
          (("afile", b"mine\n"),)),
        C("data.cache_dir is a file", "paths", _t("data.cache_dir={dir}/afile", "train.run_dir={dir}/new-run"),
          ("data.cache_dir", "afile"), (("afile", b"mine\n"),)),
        C("prepare --out is a file", "paths", ("prepare", "{dir}/in", "--out", "{dir}/afile", "--workers", "1",
                                               "--no-progress"), "afile", (("afile", b"mine\n"), *TEXT)),
        C("prepare --out inside a file", "paths", ("prepare", "{dir}/in", "--out", "{dir}/afile/out", "--workers", "1",
                                                   "--no-progress"), "afile", (("afile", b"mine\n"), *TEXT)),
        C("verify --keep unwritable", "paths", ("verify", "gpt-tiny", "--steps", "1", "--keep", "/proc/scaletrain-keep"),
          "--keep"),
        C("verify --keep inside a file", "paths", ("verify", "gpt-tiny", "--steps", "1", "--keep", "{dir}/afile/keep"),
          "--keep", (("afile", b"mine\n"),)),
        C("profile --out is a file", "paths", ("profile", "gpt-tiny", "--steps", "1", "--warmup", "0", "--out",
                                               "{dir}/afile"), "--out", (("afile", b"mine\n"),)),
        C("plan --write inside a file", "paths", ("plan", "gpt-tiny", "--write", "{dir}/afile/plan.yaml"), "--write",
          (("afile", b"mine\n"),)),
        C("compress --out is a file", "paths", ("compress", "{run}", "--out", "{dir}/afile", *COMPRESS), "--out",
          (("afile", b"mine\n"),), needs=("run",)),
        C("compress --out is the run itself", "paths", ("compress", "{run}", "--out", "{run}", *COMPRESS), "--out",
          needs=("run",)),
        C("bench optim --out is a file", "paths", ("bench", "optim", "--task", "mlp", "--steps", "1", "--optimizers",
                                                   "sgd", "--out", "{dir}/afile"), "--out", (("afile", b"mine\n"),)),
        C("doctor on a file", "paths", ("doctor", "{dir}/afile"), "afile", (("afile", b"mine\n"),)),
        C("data verify on a file", "paths", ("data", "verify", "{dir}/afile"), "afile", (("afile", b"mine\n"),)),
        C("eval on a folder that is not a run", "paths", ("eval", "{dir}/notarun"), "notarun", (("notarun/a.txt", b"x"),)),
        # -- data with nothing in it (0 tokens is bad input) --
        C("prepare: 0-byte JSONL", "data", ("prepare", "{dir}/empty.jsonl", *PREP_OUT), "empty.jsonl",
          (("empty.jsonl", b""),)),
        C("prepare: JSONL whose field is never a string", "data", ("prepare", "{dir}/nums.jsonl", *PREP_OUT), "nums.jsonl",
          (("nums.jsonl", b'{"text": 1}\n{"text": null}\n{"text": ["a"]}\n{"text": {"a": "b"}}\n'),)),
        C("prepare: JSONL of invalid lines", "data", ("prepare", "{dir}/junk.jsonl", *PREP_OUT), "junk.jsonl",
          (("junk.jsonl", b"{not json\n\xff\xfe\n[1, 2\n"),)),
        C("prepare: Parquet whose column is not text", "data", ("prepare", "{dir}/n.parquet", *PREP_OUT), "n.parquet",
          (("n.parquet", parquet_bytes({"text": [1, 2, 3]})),)),
        C("prepare: Parquet without the field", "data", ("prepare", "{dir}/o.parquet", *PREP_OUT), "text",
          (("o.parquet", parquet_bytes({"other": ["a", "b"]})),)),
        C("prepare: random bytes as Parquet", "data", ("prepare", "{dir}/junk.parquet", *PREP_OUT), "junk.parquet",
          (("junk.parquet", JUNK),)),
        C("prepare: only empty text files", "data", ("prepare", "{dir}/emptytexts", *PREP_OUT), "emptytexts",
          (("emptytexts/a.txt", b""), ("emptytexts/b.txt", b"\n\n"))),
        C("train: only empty text files", "data", _t("data.path={dir}/emptytexts", "train.run_dir={dir}/new-run"),
          ("data.path", "emptytexts"), (("emptytexts/a.txt", b""), ("emptytexts/b.txt", b""))),
        C("prepare --tokenizer missing", "data", ("prepare", "{dir}/in", *PREP_OUT, "--tokenizer", "{dir}/nope.json"),
          "nope.json", TEXT),
        C("prepare --tokenizer junk", "data", ("prepare", "{dir}/in", *PREP_OUT, "--tokenizer", "{dir}/tok.json"),
          "tok.json", (("tok.json", b'{"model": 5}'), *TEXT)),
        C("prepare --merge of a folder that is not prepared", "data", ("prepare", "--merge", "{dir}/notprepared",
                                                                       "--out", "{dir}/merged"), "notprepared",
          (("notprepared/a.txt", b"x"),)),
        # -- resume (write order, resume=auto, architecture) --
        C("resume=auto on a folder that is not a run", "resume", _t("train.run_dir={dir}/notes", "train.resume=auto"),
          "train.resume", plant=(not_a_run,)),
        C("resume=auto when every checkpoint is damaged", "resume", _t("train.run_dir={run}", "train.resume=auto"),
          "train.resume", plant=(bitflip_checkpoint,), needs=("run",)),
        C("resume with model.rope=true", "resume", _t("train.run_dir={run}", "train.resume=auto", "model.rope=true"),
          "model.rope", needs=("run",)),
        C("resume with model.norm=rmsnorm", "resume", _t("train.run_dir={run}", "train.resume=auto", "model.norm=rmsnorm"),
          "model.norm", needs=("run",)),
        C("resume with model.d_model=128", "resume", _t("train.run_dir={run}", "train.resume=auto", "model.d_model=128"),
          "model.d_model", needs=("run",)),
        C("resume refused for another data: tokenizer untouched", "resume",
          _t("train.run_dir={run}", "train.resume=auto", "data.vocab_size=384"), "vocab_size", needs=("run",)),
        C("trainer.json: step is a string", "resume", _t("train.run_dir={run}", "train.resume=auto"), "trainer.json",
          plant=(state_change(lambda d: d.update(step="2")),), needs=("run",)),
        C("trainer.json: step is negative", "resume", _t("train.run_dir={run}", "train.resume=auto"), "trainer.json",
          plant=(state_change(lambda d: d.update(step=-7)),), needs=("run",)),
        C("trainer.json: position is a list", "resume", _t("train.run_dir={run}", "train.resume=auto"), "trainer.json",
          plant=(state_change(lambda d: d.update(position=[1])),), needs=("run",)),
        C("trainer.json: rng missing", "resume", _t("train.run_dir={run}", "train.resume=auto"), "trainer.json",
          plant=(state_change(lambda d: d.pop("rng")),), needs=("run",)),
        C("trainer.json: a list", "resume", _t("train.run_dir={run}", "train.resume=auto"), "trainer.json",
          plant=(raw_file("trainer.json", "[1, 2]"),), needs=("run",)),
        C("trainer.json: not JSON", "resume", _t("train.run_dir={run}", "train.resume=auto"), "trainer.json",
          plant=(raw_file("trainer.json", "{step: 2"),), needs=("run",)),
        C("checksums.json: a list", "resume", _t("train.run_dir={run}", "train.resume=auto"), "checksums.json",
          plant=(raw_file("checksums.json", "[1, 2]"),), needs=("run",)),
        C("checksums.json: values are numbers", "resume", _t("train.run_dir={run}", "train.resume=auto"),
          "checksums.json", plant=(state_change(lambda d: {k: 5 for k in d}, "checksums.json"),), needs=("run",)),
        C("checksums.json by path: not JSON", "resume", _t("train.resume={ckpt}", "train.run_dir={dir}/new-run"),
          "checksums.json", plant=(raw_file("checksums.json", "{"),), needs=("run",)),
        # -- eval, generate, compress: run files that do not belong together --
        C("eval: model.safetensors truncated", "run files", ("eval", "{run}", "--batches", "1"), "model.safetensors",
          plant=(lambda s: (s.run / "model.safetensors").write_bytes((s.run / "model.safetensors").read_bytes()[:1000]),),
          needs=("run",)),
        C("generate: model.safetensors random", "run files", ("generate", "{run}", "--tokens", "1"), "model.safetensors",
          plant=(junk_file("run/model.safetensors", JUNK),), needs=("run",)),
        C("compress: model.safetensors truncated", "run files", ("compress", "{run}", "--out", "{dir}/c", *COMPRESS),
          "model.safetensors", plant=(lambda s: (s.run / "model.safetensors").write_bytes(
              (s.run / "model.safetensors").read_bytes()[:1000]),), needs=("run",)),
        C("eval: model_config.json not JSON", "run files", ("eval", "{run}", "--batches", "1"), "model_config.json",
          plant=(junk_file("run/model_config.json", b"{args"),), needs=("run",)),
        C("generate: model_config.json args of the wrong type", "run files", ("generate", "{run}", "--tokens", "1"),
          "model_config.json", plant=(edit_model_config(n_layer="two"),), needs=("run",)),
        # eval builds the model model_config.json describes (the weights are checked against it); a
        # config.yaml of another family is refused by name.
        C("eval: config.yaml of another model family", "run files", ("eval", "{run}", "--batches", "1"),
          "config.yaml trains 'llama'", plant=(edit_run_config(lambda c: c.update(model={"name": "llama"})),),
          needs=("run",)),
        C("generate: tokenizer.json of another vocabulary", "run files", ("generate", "{run}", "--tokens", "1"),
          "tokenizer.json", plant=(swap_tokenizer,), needs=("run",)),
        C("generate: tokenizer.json junk", "run files", ("generate", "{run}", "--tokens", "1"), "tokenizer.json",
          plant=(junk_file("run/tokenizer.json", b'{"model": [1]}'),), needs=("run",)),
        C("compress --checkpoint of another model", "run files",
          ("compress", "{run}", "--checkpoint", "{dir}/other/checkpoints/step_00000001", "--out", "{dir}/c", *COMPRESS),
          "step_00000001", plant=(other_model_checkpoint,), needs=("run",)),
        C("compress --student with an unknown key", "run files",
          ("compress", "{run}", "--method", "distill", "--student", "nosuchkey=1", "--out", "{dir}/c", *COMPRESS[2:]),
          "nosuchkey", needs=("run",)),
        C("compress --student not KEY=VALUE", "run files",
          ("compress", "{run}", "--method", "distill", "--student", "d_model", "--out", "{dir}/c", *COMPRESS[2:]),
          "--student", needs=("run",)),
        C("compress --method unknown", "run files", ("compress", "{run}", "--method", "zip", "--out", "{dir}/c"),
          "zip", needs=("run",)),
        # -- Hugging Face model folders (model.path, model.init_from) and export --
        C("train model.path: pickled weights only", "hf", _t("model.name=hf", "model.path={dir}/hf"),
          "pytorch_model.bin", (("hf/config.json", HF_CONFIG), ("hf/pytorch_model.bin", JUNK))),
        C("train model.path: config.json not JSON", "hf", _t("model.name=hf", "model.path={dir}/hf"), "config.json",
          (("hf/config.json", b'{"model_type": "llama",'),)),
        C("train model.path: model.safetensors random", "hf", _t("model.name=hf", "model.path={dir}/hf"),
          "model.safetensors", (("hf/config.json", HF_CONFIG), ("hf/model.safetensors", JUNK))),
        C("train model.path: code to run (auto_map)", "hf", _t("model.name=hf", "model.path={dir}/hf"),
          "not an architecture transformers", (("hf/config.json", HF_CONFIG.replace(
              b'"llama"', b'"mine", "auto_map": {"AutoModelForCausalLM": "modeling_mine.Mine"}')),
              ("hf/modeling_mine.py", b"raise SystemExit('must never run')\n"))),
        C("train model.path: an index naming a file outside", "hf", _t("model.name=hf", "model.path={dir}/hf"),
          "outside", (("hf/config.json", HF_CONFIG),
                      ("hf/model.safetensors.index.json", b'{"weight_map": {"w": "../../../etc/passwd"}}'))),
        C("train model.path: tokenizer.json junk", "hf", _t("model.name=hf", "model.path={dir}/hf"), "tokenizer.json",
          (("hf/config.json", HF_CONFIG), ("hf/tokenizer.json", b'{"model": [1]}'))),
        C("train model.trust_remote_code=true", "hf", _t("model.name=hf", "model.path={dir}/hf",
                                                         "model.trust_remote_code=true"), "model.trust_remote_code",
          (("hf/config.json", HF_CONFIG),)),
        C("train model.init_from: a Llama folder into the GPT", "hf", _t("model.init_from={dir}/hf"),
          "model.name=llama", (("hf/config.json", HF_CONFIG),)),
        C("train model.init_from: a folder without config.json", "hf", _t("model.init_from={dir}/hf"),
          "model.init_from", (("hf/model.safetensors", JUNK),)),
        C("export --out is a file", "hf", ("export", "{run}", "--format", "hf", "--out", "{dir}/afile"), "--out",
          (("afile", b"mine\n"),), needs=("run",)),
        C("export --out holds files", "hf", ("export", "{run}", "--format", "hf", "--out", "{dir}/out"), "--out",
          (("out/keep.txt", b"mine\n"),), needs=("run",)),
        C("export --lora adapter of a run without LoRA", "hf",
          ("export", "{run}", "--format", "hf", "--lora", "adapter", "--out", "{dir}/out"), "--lora", needs=("run",)),
        C("export --format unknown", "hf", ("export", "{run}", "--format", "gguf", "--out", "{dir}/out"), "--format",
          needs=("run",)),
        C("export: model.safetensors truncated", "hf", ("export", "{run}", "--format", "hf", "--out", "{dir}/out"),
          "model.safetensors", plant=(lambda s: (s.run / "model.safetensors").write_bytes(
              (s.run / "model.safetensors").read_bytes()[:1000]),), needs=("run",)),
        # -- doctor: a run folder whose files are not what the trainer writes --
        C("doctor: summary.json malformed", "doctor", ("doctor", "{run}"), "summary.json",
          plant=(junk_file("run/summary.json", b'{"mfu": 0.3,'),), needs=("run",)),
        C("doctor: summary.json a list", "doctor", ("doctor", "{run}", "--json"), "summary.json",
          plant=(junk_file("run/summary.json", b"[0.3]"),), needs=("run",)),
        C("doctor: summary.json mfu a string", "doctor", ("doctor", "{run}"), "mfu",
          plant=(junk_file("run/summary.json", b'{"mfu": "high"}'),), needs=("run",)),
        C("doctor: summary.json binary", "doctor", ("doctor", "{run}"), "summary.json",
          plant=(junk_file("run/summary.json", JUNK),), needs=("run",)),
        C("doctor: config.yaml nested 20,000 deep", "doctor", ("doctor", "{run}"), "config.yaml",
          plant=(junk_file("run/config.yaml", f"optim: {DEEP_YAML}\n".encode()),), needs=("run",)),
        C("doctor: config.yaml a list", "doctor", ("doctor", "{run}"), "config.yaml",
          plant=(junk_file("run/config.yaml", b"- 1\n- 2\n"),), needs=("run",)),
        C("doctor: config.yaml binary", "doctor", ("doctor", "{run}"), "config.yaml",
          plant=(junk_file("run/config.yaml", JUNK),), needs=("run",)),
        C("doctor: metrics.jsonl a folder", "doctor", ("doctor", "{dir}/fake"), "metrics.jsonl",
          (("fake/metrics.jsonl/x", b""),)),
        # -- runs: the same run files, read by the same checked readers --
        C("runs: summary.json malformed", "doctor", ("runs", "{run}", "--json"), "summary.json",
          plant=(junk_file("run/summary.json", b'{"mfu": 0.3,'),), needs=("run",)),
        C("runs: summary.json mfu a string", "doctor", ("runs", "{run}", "--plot", "{dir}/v.png"), "mfu",
          plant=(junk_file("run/summary.json", b'{"mfu": "high"}'),), needs=("run",)),
        C("runs on a file", "paths", ("runs", "{dir}/afile"), "afile", (("afile", b"mine\n"),)),
        C("runs --plot into a folder", "paths", ("runs", "{run}", "--plot", "{dir}/out"), "--plot",
          (("out/x", b"mine\n"),), needs=("run",)),
        # -- data inspect / verify: junk manifests and folders --
        C("data inspect: junk manifest", "data folders", ("data", "inspect", "{data}"), "manifest.json",
          plant=(junk_file("data/manifest.json", b"{\x00junk"),), needs=("data",)),
        C("data inspect: manifest a list", "data folders", ("data", "inspect", "{data}"), "manifest.json",
          plant=(junk_file("data/manifest.json", b"[]"),), needs=("data",)),
        C("data inspect: manifest of wrong types", "data folders", ("data", "inspect", "{data}"), "vocab_size",
          plant=(lambda s: manifest_changed(s, lambda m: m.update(vocab_size="512")),), needs=("data",)),
        C("data inspect: stats.json junk", "data folders", ("data", "inspect", "{data}"), "stats.json",
          plant=(junk_file("data/stats.json", b"[[["),), needs=("data",)),
        C("data inspect: tokenizer.json junk", "data folders", ("data", "inspect", "{data}"), "tokenizer.json",
          plant=(junk_file("data/tokenizer.json", b"{}"),), needs=("data",)),
        C("data inspect: document offsets out of range", "data folders", ("data", "inspect", "{data}", "--samples", "2"),
          "offsets", plant=(offsets_out_of_range,), needs=("data",)),
        C("data inspect: ids beyond the vocabulary", "data folders", ("data", "inspect", "{data}"), "vocabulary",
          plant=(ids_beyond_vocabulary,), needs=("data",)),
        C("data verify: manifest of wrong types", "data folders", ("data", "verify", "{data}"), "1 problem",
          plant=(lambda s: manifest_changed(s, lambda m: m["splits"].update(val=[])),), needs=("data",), listing=True),
    ]
    return cases


CASES = enumerated()
UNTRUSTED = untrusted_cases()
ALL = CASES + UNTRUSTED


# ---- running a case ------------------------------------------------------------------------------

def snapshot(root: Path) -> dict:
    """Every path under `root` (links not followed): its mtime and content, link target or None."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(folder) / name
            st = p.lstat()
            if p.is_symlink():
                content = ("link", os.readlink(p))
            elif p.is_dir():
                content = None
            else:
                content = p.read_bytes()
            out[str(p.relative_to(root))] = (st.st_mtime_ns, content)
    out["."] = (root.stat().st_mtime_ns, None)
    return out


def changed(before: dict, after: dict) -> list[str]:
    names = sorted(set(before) | set(after))
    return [("new " if n not in before else "gone " if n not in after else "changed ") + n
            for n in names if before.get(n) != after.get(n)]


def materialize(case: Case, root: Path, trained: Path, prepared: Path, cache: str) -> list[str]:
    """Build the case's folder under `root` and return its argv with the placeholders filled in."""
    site = Site(root)
    if "run" in case.needs:
        shutil.copytree(trained, site.run, symlinks=True)
    if "data" in case.needs:
        shutil.copytree(prepared, site.data, symlinks=True)
    for rel, content in case.files:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    for plant in case.plant:
        plant(site)
    values = {"dir": str(root), "run": str(site.run), "ckpt": str(site.ckpt), "data": str(site.data),
              "marker": str(site.marker), "cache": cache}
    argv = [fill(a, values) for a in case.argv]
    if argv[0] == "train":  # the case's own overrides come last: they win over these
        fixed = [*TRAIN_DEFAULTS, f"data.cache_dir={cache}", f"train.run_dir={root}/new-run"]
        source = argv[1:2] if len(argv) > 1 and "=" not in argv[1] else []
        argv = ["train", *source, *fixed, *argv[1 + len(source):]]
    return argv


def fill(text: str, values: dict) -> str:
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text


@dataclass
class Outcome:
    code: int
    out: str
    err: str
    seconds: float
    marker: bool = False
    changes: list = field(default_factory=list)

    def problems(self, case: Case) -> list[str]:
        """Every way the outcome breaks the contract (empty: a clean refusal)."""
        lines = self.err.strip().splitlines()
        found = []
        if self.code != 2:
            found.append(f"exit code {self.code}, expected 2")
        if "Traceback" in self.err:
            found.append("a traceback")
        if len(lines) != 1 or not lines[0].startswith("error: "):
            found.append(f"{len(lines)} stderr lines, expected one starting with 'error: '")
        elif not any(e in lines[0] for e in (case.expected if isinstance(case.expected, tuple) else (case.expected,))):
            found.append(f"the error line does not name {case.expected!r}")
        if self.out and not case.listing:
            found.append("output on stdout")
        if self.marker:
            found.append("THE PAYLOAD RAN (marker created)")
        if self.changes:
            found.append(f"files touched: {self.changes[:6]}")
        return found


def _limit_memory() -> None:  # in the child: a bomb ends in MemoryError instead of swapping the box
    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))


def run_subprocess(argv: list[str], cwd: Path, timeout: float) -> tuple[int, str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "COLUMNS": "200"}
    try:
        proc = subprocess.run([sys.executable, "-m", "scaletrain", *argv], cwd=cwd, capture_output=True,
                              timeout=timeout, env=env, preexec_fn=_limit_memory)
    except subprocess.TimeoutExpired as exc:
        return -9, "", f"timed out after {timeout} s\n" + (exc.stderr or b"").decode(errors="replace")[-2000:]
    return proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")


def run_case(case: Case, root: Path, trained: Path, prepared: Path, cache: str, timeout: float = 30) -> Outcome:
    """Materialize the case under the empty folder `root`, run it (from inside `root`, so relative
    defaults land there too) and record what happened."""
    from conftest import run_main

    argv = materialize(case, root, trained, prepared, cache)
    before = snapshot(root)
    began = time.monotonic()
    cwd = os.getcwd()
    os.chdir(root)
    try:
        if case.subprocess:
            code, out, err = run_subprocess(argv, root, timeout)
        else:
            try:
                code, out, err = run_main(*argv)
            except KeyboardInterrupt:
                raise
            except BaseException:  # what escapes main() (DCP's CheckpointException is no Exception): exit 1
                code, out, err = 1, "", traceback.format_exc()
    finally:
        os.chdir(cwd)
    outcome = Outcome(code, out, err, time.monotonic() - began, marker=Site(root).marker.exists())
    outcome.changes = changed(before, snapshot(root))
    return outcome


# ---- the shared trained run ----------------------------------------------------------------------

_SHARED: dict[str, tuple[Path, Path]] = {}


def shared_inputs(base: Path, cache: str) -> tuple[Path, Path]:
    """(trained run, prepared data): ONE tiny gpt-tiny run (2 steps, a checkpoint at step 2) for
    the whole session, trained once under `base` and copied by every case that needs it."""
    if cache not in _SHARED:
        from conftest import run_main

        run = base / "trained-run"
        code, _, err = run_main("train", "gpt-tiny", *TRAIN_DEFAULTS, "train.max_steps=2", f"data.cache_dir={cache}",
                                f"train.run_dir={run}")
        assert code == 0 and (run / "checkpoints" / STEP / ".metadata").is_file(), err[-2000:]
        prepared = next(p for p in Path(cache).iterdir() if (p / "manifest.json").is_file())
        _SHARED[cache] = (run, prepared)
    return _SHARED[cache]
