"""benchmarks/docs_out.py: a benchmark's section is replaced in place, or placed where asked."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from docs_out import merge_results, write_section  # noqa: E402

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


def test_merge_keeps_other_benchmarks_keys(tmp_path):
    path = tmp_path / "performance.json"
    merge_results(path, {"a": 1, "b": 2})
    assert merge_results(path, {"b": 3}) == {"a": 1, "b": 3}
