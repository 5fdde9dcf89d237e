"""A user's own training script, as README's "Bring your own model" shows it: a `transformers`
model and a dataset of dict rows through the Python API, with a layout from the config.

    python hf_api_script.py OUT single                                   # one process
    torchrun --standalone --nproc-per-node 2 hf_api_script.py OUT fsdp   # two ranks

Every rank runs the same script; rank 0 writes OUT/run (metrics.jsonl: the loss of every step).
"""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaConfig  # noqa: E402

from scaletrain import CausalLanguageModeling, Trainer, load_config  # noqa: E402

out, strategy = sys.argv[1], sys.argv[2]
ranks = int(os.environ.get("WORLD_SIZE", "1"))

torch.manual_seed(0)  # the same initial weights on every rank
config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
model = AutoModelForCausalLM.from_config(config)

# Rows of token ids counting up from a random start: a pattern the model can learn.
starts = torch.randint(0, 64, (80,), generator=torch.Generator().manual_seed(1))
rows = [{"input_ids": ((s + torch.arange(17)) % 64).tolist()} for s in starts.tolist()]
task = CausalLanguageModeling(rows[:64], rows[64:], seed=0)

cfg = load_config("gpt-tiny", [
    f"train.run_dir={out}/run", f"parallel.strategy={strategy}", "parallel.activation_checkpointing=true",
    "optim.name=sgd", "optim.lr=0.5", "schedule.name=constant", "schedule.warmup_steps=0", "train.precision=fp32",
    "train.max_steps=6", f"train.batch_size={8 // ranks}", "train.threads=1", "train.eval_every=0",
    "log.every=1", "log.progress=false", "log.tensorboard=false", "log.sample_tokens=0",
])
summary = Trainer.from_config(cfg, model, task).fit()
