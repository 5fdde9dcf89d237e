"""The method names, importable without torch (the CLI parser lists them)."""
METHODS = ("int8-dynamic", "int8-weight", "onnx-int8", "prune", "prune-structured", "distill", "lowrank")
