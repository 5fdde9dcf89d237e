"""From a validated config to a ready `Trainer`: data, task, model, run folder.

Order matters for "bad input loses nothing": every check that can fail on user input (config,
data files, an existing run folder) runs before the run folder is created, and nothing here
writes to it (the trainer does, after the resume checks).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from scaletrain.config.schema import Config
from scaletrain.data import images
from scaletrain.data.cache import prepared, settings
from scaletrain.data.loader import PackedLoader, PreadTokens, SampleOrder, TokenWindows, data_fingerprint
from scaletrain.data.mixture import ConcatWindows, Mixture
from scaletrain.data.shards import TokenShards, read_manifest
from scaletrain.data.tokenizer import load_tokenizer, tokenizer_fingerprint
from scaletrain.errors import UserError
from scaletrain.models import build_model, get_family
from scaletrain.models.family import DataShape
from scaletrain.train import pretrained, resume
from scaletrain.train.tasks import Classification, LanguageModeling
from scaletrain.train.trainer import Trainer, resolve_device
from scaletrain.untrusted.hf import names_code, read_config

log = logging.getLogger(__name__)


def default_run_dir(cfg: Config) -> Path:
    # The name becomes a folder name under runs/: a separator in it (`name=../../x`) would place
    # the run anywhere on the disk.
    if any(sep in cfg.name for sep in ("/", "\\", os.sep, "\0")):
        raise UserError(f"name: {cfg.name!r} is used as a folder name under runs/ and must not contain "
                        "a path separator; choose the folder with train.run_dir")
    return Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def check_run_dir(cfg: Config, run_dir: Path) -> None:
    """train.run_dir and train.resume, checked before any data is read (see train/resume.py)."""
    resume.check_folder(cfg, run_dir)


def check_device(cfg: Config) -> torch.device:
    device = resolve_device(cfg)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device=cuda but no CUDA device is available")
    if cfg.train.precision == "fp16" and device.type == "cpu":
        raise UserError("train.precision=fp16 is not supported on CPU (about 100x slower than fp32 "
                        "there); use bf16 or fp32")
    return device


def token_byte_lengths(tokenizer) -> np.ndarray:
    """UTF-8 bytes each token stands for (0 for special tokens): the bits-per-byte denominator.

    Byte-level BPE spells every byte as one printable character, so a token's byte count is the
    length of its vocabulary string.
    """
    specials = {t.content for t in tokenizer.get_added_tokens_decoder().values()}
    lengths = np.zeros(tokenizer.get_vocab_size(), dtype=np.int64)
    for token, index in tokenizer.get_vocab().items():
        if token not in specials:
            lengths[index] = len(token)
    return lengths


def _text_task(cfg: Config, progress: bool):
    d = cfg.data
    if d.mixture:
        return _mixture_task(cfg)
    # The same pipeline as `scaletrain prepare` (sources, data.clean, data.dedup), cached by a
    # fingerprint of the inputs and settings. A pretrained model's data is tokenized with the
    # model's own tokenizer, when its folder has one.
    own = pretrained.folder_tokenizer(cfg)
    prep = settings(d)
    if own:
        prep = prep.model_copy(update={"tokenizer": str(own.path), "eot": own.eot})
    data_dir = prepared(prep, Path(d.cache_dir).expanduser(), progress=progress,
                        what="data.path" if d.path else "data")
    # verify: every shard's checksum (XXH3 reads ~7 GB/s here): a bit flipped in the cache since it
    # was prepared is refused, naming the file, instead of being trained on.
    train, val = TokenShards(data_dir, "train", verify=True), TokenShards(data_dir, "val", verify=True)
    tokenizer = load_tokenizer(data_dir / "tokenizer.json")
    task = LanguageModeling.from_shards(
        train, val, seq_len=d.seq_len, seed=cfg.train.seed, fraction=d.train_fraction,
        token_bytes=token_byte_lengths(tokenizer), train_counts=train.bincount(),
        fingerprint=data_fingerprint(data_dir), document_mask=d.document_mask)
    return task, DataShape(vocab_size=tokenizer.get_vocab_size(), seq_len=d.seq_len), tokenizer, data_dir


def _mixture_task(cfg: Config):
    """data.mixture: several prepared directories, one tokenizer, mixed by weight (data/mixture.py)."""
    d = cfg.data
    dirs = [Path(m.path).expanduser() for m in d.mixture]
    fingerprints = [read_manifest(p).get("tokenizer_fingerprint") for p in dirs]
    for p, fp in zip(dirs[1:], fingerprints[1:]):
        if fp != fingerprints[0]:
            raise UserError(f"data.mixture: {p} was tokenized with another tokenizer than {dirs[0]} "
                            f"(fingerprints {fp} and {fingerprints[0]}); prepare all sources with the same tokenizer")
    tokenizer = load_tokenizer(dirs[0] / "tokenizer.json")
    own = pretrained.folder_tokenizer(cfg)
    if own is not None and tokenizer_fingerprint(load_tokenizer(own.path)) != fingerprints[0]:
        raise UserError(f"data.mixture: {dirs[0]} was tokenized with another tokenizer than the model's "
                        f"({own.path}); prepare the sources with --tokenizer {own.path}")
    weights = [m.weight for m in d.mixture]
    sources, vals, counts = [], [], np.zeros(tokenizer.get_vocab_size(), dtype=np.float64)
    total_tokens = 0
    for p, w in zip(dirs, weights):
        train = TokenShards(p, "train", verify=True)
        windows = TokenWindows(PreadTokens(train), d.seq_len)
        order = SampleOrder(len(windows), cfg.train.seed, d.train_fraction, fingerprint=data_fingerprint(p))
        sources.append(PackedLoader(windows, order, d.document_mask))
        vals.append(TokenWindows(TokenShards(p, "val", verify=True), d.seq_len))
        # The unigram baseline of the mixture: each source's token frequencies in its share.
        c = train.bincount()[: len(counts)].astype(np.float64)
        total_tokens += len(train)
        counts[: len(c)] += w / sum(weights) * c / max(c.sum(), 1.0)
    mixture = Mixture(sources, weights, cfg.train.seed, names=[str(p) for p in dirs])
    task = LanguageModeling(mixture, ConcatWindows(vals), token_bytes=token_byte_lengths(tokenizer),
                            train_counts=counts * total_tokens)
    return task, DataShape(vocab_size=tokenizer.get_vocab_size(), seq_len=d.seq_len), tokenizer, dirs[0]


def _image_task(cfg: Config):
    d = cfg.data
    data = images.load_mnist(d.path) if d.path else images.load_digits_split(d.val_fraction, seed=0)
    if d.standardize:
        data = images.standardize(data)
    train = torch.utils.data.TensorDataset(torch.from_numpy(data.x_train), torch.from_numpy(data.y_train))
    val = torch.utils.data.TensorDataset(torch.from_numpy(data.x_val), torch.from_numpy(data.y_val))
    task = Classification(train, val, seed=cfg.train.seed, fraction=d.train_fraction)
    return task, DataShape(input_dim=data.input_dim, num_classes=data.num_classes), data


def build_task(cfg: Config, device: torch.device, progress: bool | None = None) -> tuple[object, dict, dict, object]:
    """(task, model args, summary extras, sampler) for the configured data; prepares text if needed.
    The model's args are its family's, from the model section and the data's shape."""
    family = get_family(cfg.model.name)
    if cfg.data.kind == "text":
        task, shape, tokenizer, data_dir = _text_task(cfg, progress=cfg.log.progress if progress is None else progress)
        return (task, family.args_from_config(cfg.model, shape), {"data_dir": str(data_dir)},
                _make_sampler(cfg, tokenizer, device))
    task, shape, data = _image_task(cfg)
    return task, family.args_from_config(cfg.model, shape), {"dataset": data.name}, None


def build_trainer(cfg: Config) -> Trainer:
    """A trainer for this process; under torchrun, for this rank (joins the process group).

    Nothing is written here: the trainer writes its run folder once a resume has been checked too
    (`Trainer._fit`), so that a refused start leaves every file as it was."""
    from scaletrain.parallel.dist import init_distributed
    from scaletrain.train.ranks import on_main

    device = check_device(cfg)
    info = init_distributed(device.type, cfg.parallel.timeout_seconds)
    # Rank 0 names the run folder (a default name has a timestamp) and checks it, for everyone.
    run_dir = on_main(checked_run_dir, cfg)
    if info.device.type == "cuda":
        device = info.device
    task, args, extra, sampler = build_task(cfg, device, progress=cfg.log.progress and info.is_main)
    family = get_family(cfg.model.name)
    folder = pretrained.model_folder(cfg)
    weights = pretrained.folder_weights(cfg, family)  # model.path (hf) or model.init_from: checked first
    torch.manual_seed(cfg.train.seed)  # the initial weights are a function of the seed
    model = build_model(cfg.model.name, args)
    spec = {"name": cfg.model.name, "args": model.args_dict()}
    if folder is not None:
        pretrained.load_folder_weights(model, weights, cfg, family)
        if family.hf is not None:  # init_from: the architecture came from the folder, say so in config.yaml
            pretrained.sync_section(cfg.model, args)
            # The folder's config.json: an export writes back what this family does not model.
            spec["hf_config"] = read_config(folder)
    if folder is not None and names_code(folder):
        log.warning("warning: %s names code to run (auto_map); it is ignored: scaletrain never runs code from a "
                    "model folder, and trains the architecture transformers itself defines for its model_type",
                    folder / "config.json")
    lora = pretrained.add_lora(model, cfg, family)
    if lora is not None:
        spec["lora"] = lora
    # After the data and model checks: bad input is reported as such before a mismatch with the run.
    on_main(resume.check_same_config, cfg, run_dir)
    run_files = {}
    if "data_dir" in extra:  # the run folder is self-contained for eval/generate
        tokenizer = Path(extra["data_dir"]) / "tokenizer.json"
        pretrained.check_vocabulary(model, load_tokenizer(tokenizer).get_vocab_size(), folder)
        run_files["tokenizer.json"] = tokenizer.read_bytes()
        own = pretrained.folder_tokenizer(cfg)
        if own is not None:  # its special tokens, for an export (tokenizer_config.json)
            run_files["tokenizer_config.json"] = (json.dumps(own.config, indent=2) + "\n").encode()
        elif folder is not None:
            log.info("%s has no tokenizer.json: the data's own tokenizer is used (data.vocab_size)", folder)
    return Trainer(cfg, model, task, run_dir=run_dir, model_spec=spec, sampler=sampler, extra_summary=extra,
                   dist_info=info, run_files=run_files, family=family)


def checked_run_dir(cfg: Config) -> Path:
    """The run folder this config names (train.run_dir, or a new one under runs/), checked."""
    run_dir = Path(cfg.train.run_dir).expanduser() if cfg.train.run_dir else default_run_dir(cfg)
    check_run_dir(cfg, run_dir)
    return run_dir


def _make_sampler(cfg: Config, tokenizer, device: torch.device):
    if not cfg.log.sample_tokens:
        return None

    def sample(model) -> str:
        ids = tokenizer.encode(cfg.log.sample_prompt).ids
        if not ids:  # the schema refuses an empty prompt; this is one that encodes to nothing
            raise ValueError("log.sample_prompt encodes to no tokens")
        prompt = torch.tensor([ids], device=device)
        gen = torch.Generator(device=device).manual_seed(cfg.train.seed)
        model.eval()
        try:
            # A run trained into NaN/Inf would end in torch.multinomial on NaN probabilities (a
            # device-side assert on CUDA, which also loses the export): look at the logits first.
            # Every rank sees the same logits, so every rank decides the same.
            with torch.no_grad():
                logits = model(prompt[:, -cfg.data.seq_len:])
            logits = logits.full_tensor() if hasattr(logits, "full_tensor") else logits
            if not torch.isfinite(logits).all():
                raise ValueError("the model's outputs are not finite (NaN or Inf weights)")
            out = model.generate(prompt, cfg.log.sample_tokens, temperature=0.8, top_k=50, generator=gen)
        finally:
            model.train()
        return tokenizer.decode(out[0].tolist())

    return sample
