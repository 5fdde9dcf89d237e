"""The one audited way to read files that came from outside this process.

A run folder, a checkpoint, a prepared-data folder or a config may have been edited or planted
(a shared disk, a download): its checksums prove only that its files belong together, not who wrote
them. Every command that reads one goes through this package:

- `files`: JSON documents (size, depth, shape) and paths written inside them (must stay inside
  their folder);
- `pickles`: the pickles DCP and torch write, read by unpicklers that build only an explicit list of
  classes; nothing else is ever unpickled;
- `checkpoint`: DCP checkpoints loaded through a planner that refuses bytes entries where tensors
  belong and reads the others as plain data only;
- `weights`: safetensors files and tokenizers, with every failure reported as one line.

docs/reliability.md has the threat model: what the tool trusts, what it does not, and how each
loader defends.
"""
