"""Where the benchmarks write: their marked section of a shared markdown file, and their keys of a
shared results JSON, each stamped with where the figures come from (git commit, ISO timestamp, CPU
flags: `scaletrain.provenance.stamp`). One implementation for all of them, each write atomic.

    write_section(docs / "performance.md", START, END, block, after="<!-- main-job:end -->")
    merge_results(docs / "results" / "performance.json", {"mfu_account": result})
    write_results(docs / "results" / "compress.json", results)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from scaletrain.atomic import write_json_atomic, write_text_atomic  # noqa: E402
from scaletrain.provenance import stamp  # noqa: E402

STAMP_KEYS = ("script", "git_commit", "git_dirty", "timestamp", "cpu_model", "cpu_flags", "torch")


def _script(script: str | None) -> str:
    return script or " ".join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])


def write_section(path: Path, start: str, end: str, block: str, *, after: str | None = None,
                  top: bool = False) -> None:
    """Replace the text from `start` to `end` (both included) with `block`, which holds both
    markers. A section not there yet goes right after the marker `after` when the file has it,
    under the title with `top`, else at the end. A missing file starts as "# Performance"."""
    block = block.rstrip("\n")
    text = path.read_text(encoding="utf-8") if path.exists() else "# Performance\n"
    if start in text and end in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
    elif after is not None and after in text:
        cut = text.index(after) + len(after)
        text = text[:cut] + "\n\n" + block + text[cut:]
    elif top:
        head, _, rest = text.partition("\n")
        text = head + "\n\n" + block + "\n" + rest
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    write_text_atomic(path, text)


def write_results(path: Path, data: dict, *, script: str | None = None) -> dict:
    """A whole results file: `data` with this run's stamp at the top level."""
    out = {**stamp(_script(script)), **{k: v for k, v in data.items() if k not in STAMP_KEYS}}
    write_json_atomic(path, out)
    return out


def merge_results(path: Path, updates: dict, *, script: str | None = None, remove: tuple[str, ...] = ()) -> dict:
    """Set `updates`' keys in the JSON file, keeping every other benchmark's keys, and drop the
    keys in `remove` (figures this benchmark no longer publishes). Each key's stamp goes into
    `provenance` (keys come from different runs); the top-level stamp is the latest writer's."""
    data = json.loads(path.read_text()) if path.exists() else {}
    here = stamp(_script(script))
    provenance = data.get("provenance") if isinstance(data.get("provenance"), dict) else {}
    for key in remove:
        data.pop(key, None)
        provenance.pop(key, None)
    data.update(updates)
    for key in updates:
        provenance[key] = here
    data.update(here)
    data["provenance"] = provenance
    write_json_atomic(path, data)
    return data
