"""Pipeline parallel for the GPT: consecutive blocks per rank, GPipe or 1F1B micro-batch schedules
(`torch.distributed.pipelining`).

Every rank still builds the whole plain model (same seed, same weights); rank i trains only its
stage — a module that holds *the same submodules under the same names* (`tok_emb`, `blocks.3`,
`lm_head`), so its state dict is a slice of the full model's and DCP checkpoints reshard to and
from every other layout. With tied embeddings the first and last stages both hold the shared
matrix; its two gradient contributions are summed across them after backward so both copies stay
equal. For evaluation and export the stages' current weights are broadcast so every rank holds
the full model again.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from scaletrain.config.schema import ParallelConfig
from scaletrain.errors import UserError
from scaletrain.parallel.dist import DistInfo


class GPTStage(nn.Module):
    """Layers `layers` of `gpt`, plus the embeddings on the first stage and the head on the last."""

    def __init__(self, gpt: nn.Module, layers: range, first: bool, last: bool):
        super().__init__()
        self.first, self.last, self.rope = first, last, gpt.args.rope
        if first:
            self.tok_emb = gpt.tok_emb
            if not self.rope:
                self.pos_emb = gpt.pos_emb
            self.drop = gpt.drop
        if self.rope:
            self.register_buffer("rope_cos", gpt.rope_cos, persistent=False)
            self.register_buffer("rope_sin", gpt.rope_sin, persistent=False)
        # A ModuleDict keyed "3", "4": the names equal the full model's `blocks.3`, `blocks.4`.
        self.blocks = nn.ModuleDict({str(i): gpt.blocks[i] for i in layers})
        if last:
            self.norm_f = gpt.norm_f
            self.lm_head = gpt.lm_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rope = (self.rope_cos, self.rope_sin) if self.rope else None
        if self.first:
            T = x.shape[1]
            h = self.tok_emb(x)
            if not self.rope:
                h = h + self.pos_emb(torch.arange(T, device=x.device))
            x = self.drop(h)
        for block in self.blocks.values():
            x = block(x, rope)
        if self.last:
            return self.lm_head(self.norm_f(x))
        return x


def stage_layers(n_layer: int, stages: int, index: int) -> range:
    """Blocks of stage `index`: an even split, the first stages taking one more when uneven."""
    base, extra = divmod(n_layer, stages)
    start = index * base + min(index, extra)
    return range(start, start + base + (1 if index < extra else 0))


def build_pipeline(model: nn.Module, cfg: ParallelConfig, info: DistInfo, mesh, *, compile: bool):
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    from scaletrain.parallel.layout import Layout
    from scaletrain.parallel.parallelize import apply_ac, apply_compile, transformer_blocks

    blocks = transformer_blocks(model)
    stages, rank = info.world, info.rank
    if len(blocks) < stages:
        raise UserError(f"parallel.strategy=pp: {len(blocks)} blocks cannot fill {stages} stages "
                        "(model.n_layer must be >= the number of ranks)")
    if cfg.activation_checkpointing:
        apply_ac(model)
    if compile:
        apply_compile(model)
    first, last = rank == 0, rank == stages - 1
    stage_module = GPTStage(model, stage_layers(len(blocks), stages, rank), first, last)
    group = mesh["pp"].get_group()
    stage = PipelineStage(stage_module, stage_index=rank, num_stages=stages, device=info.device, group=group)
    layout = Layout("pp", model, stage_module, info, mesh)
    layout.extras.update(stage_module=stage_module, pp_group=group, last_rank=stages - 1)
    tied = _tied_parameter(model)
    if tied is not None and stages > 1:  # every rank takes part in creating a group
        layout.extras["ends_group"] = dist.new_group(ranks=[0, stages - 1])
    layout.extras["consolidate"] = lambda: consolidate(model, stages)

    def make_step(loss_fn, grad_clip: float):
        schedule_cls = Schedule1F1B if cfg.pp_schedule == "1f1b" else ScheduleGPipe
        # scale_grads: each micro-batch's loss is a mean, so gradients are divided by their count.
        schedule = schedule_cls(stage, n_microbatches=cfg.pp_microbatches, loss_fn=loss_fn, scale_grads=True)

        def step(batches, optimizer, *, want_norm: bool, before_zero_grad=None):
            from scaletrain.parallel.layout import clip_grads, global_grad_norm

            x = torch.cat([b[0] for b in batches]).to(info.device)
            y = torch.cat([b[1] for b in batches]).to(info.device)
            if x.shape[0] % cfg.pp_microbatches:
                raise UserError(f"parallel.pp_microbatches={cfg.pp_microbatches} must divide the step's "
                                f"batch of {x.shape[0]} samples (train.batch_size x train.grad_accum)")
            losses: list[torch.Tensor] = []
            if first and last:
                schedule.step(x, target=y, losses=losses)
            elif first:
                schedule.step(x)
            elif last:
                schedule.step(target=y, losses=losses)
            else:
                schedule.step()
            if tied is not None and stages > 1 and tied.grad is not None and (first or last):
                # Both ends hold the tied matrix: sum the embedding's and the head's gradients.
                dist.all_reduce(tied.grad, group=layout.extras["ends_group"])
            params = [p for p in stage_module.parameters() if p.grad is not None]
            norm = None
            if grad_clip > 0 or want_norm:
                norm = global_grad_norm(_untied(params, tied, first), group)
                if grad_clip > 0:
                    clip_grads(params, grad_clip, norm)
            optimizer.step()
            if before_zero_grad is not None:
                before_zero_grad()
            optimizer.zero_grad(set_to_none=True)
            loss = torch.stack(losses).mean().detach() if losses else torch.zeros((), device=info.device)
            return loss, norm

        return step

    layout.extras["make_step"] = make_step
    return layout


def _tied_parameter(model: nn.Module):
    head, emb = getattr(model, "lm_head", None), getattr(model, "tok_emb", None)
    if head is not None and emb is not None and head.weight is emb.weight:
        return head.weight
    return None


def _untied(params, tied, first: bool):
    """Count the tied matrix once in the global norm (on the first stage only)."""
    if tied is None or first:
        return params
    return [p for p in params if p is not tied]


@torch.no_grad()
def consolidate(model: nn.Module, stages: int) -> None:
    """Broadcast every parameter from the stage that trains it, so each rank holds the full model."""
    for name, param in model.named_parameters():
        index = _block_index(name)
        n_layer = len(model.blocks)
        if index is None:  # embeddings live on the first stage, final norm and head on the last
            owner = stages - 1 if name.startswith(("norm_f", "lm_head")) else 0
        else:
            owner = next(s for s in range(stages) if index in stage_layers(n_layer, stages, s))
        dist.broadcast(param.data, src=owner)


def _block_index(name: str) -> int | None:
    parts = name.split(".")
    if parts[0] == "blocks":
        return int(parts[1])
    return None
