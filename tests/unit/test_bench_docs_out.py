"""benchmarks/docs_out.py: a benchmark's section is replaced in place, or placed where asked."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from docs_out import merge_results, write_results, write_section  # noqa: E402

S, E = "<!-- x:start -->", "<!-- x:end -->"


def test_replaced_in_place_inserted_after_a_marker_under_the_title_or_appended(tmp_path):
    doc = tmp_path / "performance.md"
    doc.write_text("# Performance\n\n<!-- a:end -->\n\ntail\n")
    write_section(doc, S, E, f"{S}\none\n{E}\n", after="<!-- a:end -->")
    assert doc.read_text() == f"# Performance\n\n<!-- a:end -->\n\n{S}\none\n{E}\n\ntail\n"
    write_section(doc, S, E, f"{S}\ntwo\n{E}", after="<!-- a:end -->")
    assert doc.read_text() == f"# Performance\n\n<!-- a:end -->\n\n{S}\ntwo\n{E}\n\ntail\n"
    write_section(doc, "<!-- t:start -->", "<!-- t:end -->", "<!-- t:start -->\n<!-- t:end -->", top=True)
    assert doc.read_text().startswith("# Performance\n\n<!-- t:start -->\n<!-- t:end -->\n\n<!-- a:end -->")
    write_section(doc, "<!-- z:start -->", "<!-- z:end -->", "<!-- z:start -->\n<!-- z:end -->")
    assert doc.read_text().endswith("tail\n\n<!-- z:start -->\n<!-- z:end -->\n")


def test_merge_keeps_other_benchmarks_keys_and_stamps_each(tmp_path):
    path = tmp_path / "performance.json"
    first = merge_results(path, {"a": 1, "b": 2}, script="one")
    merged = merge_results(path, {"b": 3, "c": 4}, script="two", remove=("a",))
    assert {k: merged[k] for k in ("b", "c")} == {"b": 3, "c": 4} and "a" not in merged
    assert merged["provenance"]["b"]["script"] == "two" and "a" not in merged["provenance"]
    assert merged["script"] == "two" and first["provenance"]["a"]["script"] == "one"


def test_every_results_file_records_commit_time_and_cpu_flags(tmp_path):
    import datetime
    import subprocess

    out = write_results(tmp_path / "x.json", {"figure": 1.5}, script="python benchmarks/x.py")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                          text=True).stdout.strip()
    assert out["figure"] == 1.5 and out["git_commit"] == head and len(head) == 40
    assert datetime.datetime.fromisoformat(out["timestamp"]).tzinfo is not None
    assert set(out["cpu_flags"]) == {"AVX2", "AVX512-BF16", "AMX", "VNNI"}
    assert all(isinstance(v, bool) for v in out["cpu_flags"].values())


def test_every_results_writer_goes_through_docs_out():
    """A benchmark that wrote docs/results/*.json itself would publish figures without their stamp."""
    bench = Path(__file__).resolve().parents[2] / "benchmarks"
    for path in sorted(bench.glob("*.py")):
        if path.name == "docs_out.py":
            continue
        text = path.read_text(encoding="utf-8")
        assert "write_json_atomic(" not in text, f"{path.name} writes JSON without docs_out's stamp"
        assert "README.md\").read_text" not in text, f"{path.name} reads a figure from the README"
