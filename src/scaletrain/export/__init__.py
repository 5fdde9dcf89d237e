"""`scaletrain export RUN --format hf|onnx --out DIR`: a finished run (or a compressed model) as a
folder other stacks load.

- `hf`: config.json + model.safetensors + tokenizer files that `transformers` loads with
  `AutoModelForCausalLM.from_pretrained(DIR)` / `AutoTokenizer.from_pretrained(DIR)`, through the
  family's name mapping (`models/<family>/hf.py`); checked by running both models on one input;
  LoRA adapters merged (default) or written as a PEFT adapter folder (`--lora adapter`);
- `onnx`: model.onnx (compress/export.py's exporter), checked under ONNX Runtime.

    from scaletrain.export import export_run
    summary = export_run("runs/llama", "hf", "exported/llama")

Names are imported on first use (the CLI lists the formats without importing torch).
"""

from importlib import import_module

FORMATS = ("hf", "onnx")
LORA_MODES = ("merged", "adapter")

__all__ = ["FORMATS", "LORA_MODES", "export_run"]


def __getattr__(name: str):
    if name == "export_run":
        return import_module("scaletrain.export.run").export_run
    raise AttributeError(f"module 'scaletrain.export' has no attribute {name!r}")
