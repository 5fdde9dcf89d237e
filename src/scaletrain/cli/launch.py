"""`scaletrain train ... parallel.nproc=N` starts torchrun underneath.

The launcher runs torchrun's own elastic agent in this process (`torch.distributed.run`), which
starts N workers running `python -m scaletrain train <the same arguments>`; each worker sees
torchrun's environment and trains as one rank. Everything the workers must agree on is decided
here first and passed as overrides: the run folder (a default name carries a timestamp) and, with
restarts enabled, `train.resume=auto` so that a restarted group continues from the newest
checkpoint instead of starting over.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from scaletrain.config.schema import Config
from scaletrain.errors import RunFailure
from scaletrain.parallel.dims import ParallelDims
from scaletrain.parallel.dist import launched_by_torchrun


def needs_launch(cfg: Config) -> bool:
    return (cfg.parallel.nproc > 1 or cfg.parallel.nnodes > 1) and not launched_by_torchrun()


def torchrun_args(cfg: Config, worker_args: list[str]) -> list[str]:
    p = cfg.parallel
    args = ["--nproc-per-node", str(p.nproc), "--max-restarts", str(p.max_restarts)]
    if p.nnodes == 1:
        args.append("--standalone")
    else:
        args += ["--nnodes", str(p.nnodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", p.rdzv_endpoint]
    # Workers' own failures are reported by them; keep the agent quiet apart from that.
    return [*args, "--module", "scaletrain", *worker_args]


def launch(cfg: Config, source: str | None, overrides: list[str]) -> int:
    from scaletrain.train.build import check_run_dir, default_run_dir

    run_dir = Path(cfg.train.run_dir).expanduser() if cfg.train.run_dir else default_run_dir(cfg)
    if cfg.parallel.nnodes == 1:  # with the user's own resume setting, before anything starts
        check_run_dir(cfg, run_dir)  # (several nodes: rank 0 checks, the others may start later)
    extra = [f"train.run_dir={run_dir}"]
    if cfg.parallel.max_restarts > 0 and cfg.train.resume is False:
        extra.append("train.resume=auto")
    worker_args = ["train", *([source] if source else []), *overrides, *extra]
    # Restarted gloo workers can read the previous round's address from a shared store and hang
    # (torch 2.13 on CPU: 11 of 16 restarts clean with the shared store, 8 of 8 without it); a fresh
    # store per round avoids it.
    os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    os.environ.setdefault("OMP_NUM_THREADS", str(cfg.train.threads or 1))
    os.environ["SCALETRAIN_LAUNCHED"] = "1"  # the workers: what this process said about the config is said
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    world = cfg.parallel.nproc * cfg.parallel.nnodes
    print(f"launching {world} ranks with torchrun (parallel.strategy="
          f"{ParallelDims.from_config(cfg.parallel, world).strategy}) into {run_dir}", file=sys.stderr, flush=True)
    try:
        run(parse_args(torchrun_args(cfg, worker_args)))
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        code = failure.exitcode
        if code == 2:  # a worker already printed its `error:` line about bad input
            raise SystemExit(2) from None
        raise RunFailure(f"rank {rank} failed with exit code {code} (its error is above); "
                         f"the last complete checkpoint in {run_dir / 'checkpoints'} is intact") from None
    finally:
        os.environ.pop("SCALETRAIN_LAUNCHED", None)
    return 0
