"""Known messages of other libraries that say nothing to a scaletrain user, kept off the console.

Each is matched narrowly (its logger and its text): a new or different message from the same
library still shows. They show again when the `scaletrain` logger is at DEBUG (`scaletrain -v`,
or a Python user's `logging.getLogger("scaletrain").setLevel(logging.DEBUG)`): the filters ask at
each message. Installed once, by `import scaletrain` (it imports nothing).
"""

from __future__ import annotations

import logging
import re
import warnings

# logger name -> what it logs that is noise here
KNOWN = {
    # torchao's prebuilt kernels for other CUDA archs and Python versions (an int8 on CPU never
    # uses them), and its Triton kernels on a machine without Triton.
    "torchao": re.compile(r"Failed to load .*torchao/_C\w*\..*\.so"),
    "torchao.kernel.intmm": re.compile(r"Detected no triton"),
    # torch's pytree: torchao registers an Enum that torch.compile now supports natively.
    "torch.utils._pytree": re.compile(r"register_constant\(\) on Enum subclasses is deprecated"),
    # bitsandbytes on CPUs with AVX512-BF16: optional kernels from the Hub (never fetched here).
    "bitsandbytes.backends.cpu.ops": re.compile(r"kernels-community|pip install kernels"),
    "bitsandbytes.backends.cpu": re.compile(r"kernels-community|pip install kernels"),
}
# warnings.warn messages (static filters: the CLI installs them unless -v).
KNOWN_WARNINGS = (
    (DeprecationWarning, r"`torch\.jit\.\w+` is deprecated"),
    (FutureWarning, r"`torch\.jit\.\w+` is deprecated"),
    (UserWarning, r".*register_constant\(\) on Enum subclasses is deprecated"),
)


class _Known(logging.Filter):
    def __init__(self, pattern: re.Pattern):
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        if logging.getLogger("scaletrain").isEnabledFor(logging.DEBUG):
            return True
        try:
            return not self.pattern.search(record.getMessage())
        except Exception:  # noqa: BLE001 - a record that does not format is not ours to judge
            return True


_installed = False


def install() -> None:
    """Attach the filters to the loggers above (idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    for name, pattern in KNOWN.items():
        logging.getLogger(name).addFilter(_Known(pattern))


def silence_warnings() -> None:
    """The `warnings` filters for KNOWN_WARNINGS (process-wide: the CLI calls it unless verbose)."""
    for category, message in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
