"""scaletrain export RUN --format hf|onnx --out DIR: a finished run in a format other stacks load."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    from scaletrain.export import FORMATS, LORA_MODES

    p = sub.add_parser(
        "export", help="write a finished run as a Hugging Face model folder or an ONNX model",
        description="Read RUN (a finished run or a compressed model: model_config.json, model.safetensors, "
        "tokenizer.json) and write a new folder --out. hf: config.json, model.safetensors and the tokenizer "
        "files, loadable with transformers' AutoModelForCausalLM / AutoTokenizer.from_pretrained (GPT runs as "
        "GPT-2, or GPT-NeoX with rope; Llama runs as LlamaForCausalLM; model.name=hf runs as their own "
        "architecture), checked against scaletrain's logits before writing. onnx: model.onnx, checked under "
        "ONNX Runtime. The folder appears complete or not at all; an existing non-empty --out is refused.",
        epilog="examples: scaletrain export runs/llama --format hf --out exported/llama | "
        "scaletrain export runs/lora --format hf --lora adapter --out exported/adapter")
    p.add_argument("run", help="run folder (or a compressed model's folder)")
    p.add_argument("--format", required=True, choices=FORMATS, help="hf or onnx")
    p.add_argument("--out", required=True, help="the folder to write (new, or empty)")
    p.add_argument("--lora", choices=LORA_MODES, default="merged",
                   help="a LoRA run: merge the adapters into the weights (default), or write a PEFT adapter "
                        "folder (adapter_config.json, adapter_model.safetensors) for the model it started from")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from scaletrain.export import export_run

    s = export_run(args.run, args.format, args.out, lora=args.lora)
    if "architecture" in s:
        print(f"{s['architecture']}: {s['parameters']:,} parameters; max |logit difference| to scaletrain "
              f"{s['max_logit_difference']:.1e} (relative)")
    if "onnx_max_abs_diff" in s:
        print(f"model.onnx: max |logit difference| under ONNX Runtime {s['onnx_max_abs_diff']:.1e}")
    if s.get("lora") == "adapter":
        print(f"PEFT adapter: {s['adapters']} adapted layers on {s['base_model']}")
    print(f"exported to {s['out']}")
    return 0
