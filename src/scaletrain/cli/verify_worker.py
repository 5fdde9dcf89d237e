"""The worker `scaletrain verify` starts under torchrun: one recorded run of the layout or the reference.

    python -m scaletrain.cli.verify_worker OUT [CONFIG] overrides...

It lives with the CLI because it prints and exits; the recording itself is
scaletrain.diagnose.verify.record_run.
"""

from __future__ import annotations

import sys
from pathlib import Path

from scaletrain.cli.commands import split_items
from scaletrain.diagnose.verify import record_run
from scaletrain.errors import RunFailure, UserError


def main(argv: list[str]) -> int:
    out = Path(argv[0])
    source, overrides = split_items(argv[1:])
    try:
        record_run(source, overrides, out)
    except (UserError, RunFailure) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
