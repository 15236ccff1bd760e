"""The results ledger (benchmarks/ledger.py): every table of measured numbers in the docs is
generated from a committed record that says what ran, where and on which code."""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("ledger", ROOT / "benchmarks" / "ledger.py")
ledger = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ledger)

DOCUMENTS = ["README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")),
             "benchmarks/README.md", "export/README.md"]
# Tables that hold no measurement, by their header line, and why.
NOT_MEASURED = {
    "| model | input | trainable params | MACs |": "computed by `keras-resnet summary` (test_cli_paths)",
    "| # | area | bad input | what the user sees (the line says) | test |": "the bad-input catalogue",
    "| weights | source | data | top-1 % | train / eval px | needs | license |": "the registry; publishers' numbers",
    "| file | what |": "the run folder's files",
    "| field | rule | why |": "fine-tuning rules",
    "| strategy | what |": "distribution strategies",
    "| | TensorFlow | JAX | PyTorch |": "what each backend supports",
    "| script | what it compares |": "the benchmark scripts",
    "| signature | input | what to send |": "the serving signatures",
    "| you want | weights | needs PyTorch | licence |": "which weights to pick",
    "| | tested | where |": "the compatibility matrix: versions, not measurements",
}


def test_every_ledger_table_in_the_docs_is_what_its_records_give():
    stale = [str(path.relative_to(ROOT)) for path, (old, new) in ledger.rendered().items() if old != new]
    assert not stale, f"{stale}: run python benchmarks/ledger.py render (or fix the record)"
    assert subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ledger.py"), "check"]).returncode == 0


def test_every_table_of_measured_numbers_comes_from_the_ledger():
    for name in DOCUMENTS:
        text = re.sub(r"<!-- ledger: [\w.-]+ -->\n.*?<!-- /ledger -->", "", (ROOT / name).read_text(), flags=re.S)
        lines = text.split("\n")
        for i, line in enumerate(lines[:-1]):
            starts = line.startswith("|") and not (i and lines[i - 1].startswith("|"))
            if starts and re.match(r"^\|[\s:|-]+\|\s*$", lines[i + 1]):
                assert line in NOT_MEASURED, f"{name}: a table outside the ledger: {line}"


def test_every_record_says_what_ran_where_and_on_which_code():
    records = ledger.load_records()
    assert len(records) >= 30
    used = {t.get("record") for t in ledger.load_tables()} | {
        r["record"] for t in ledger.load_tables() for r in t.get("rows", [])}
    for rid, entry in records.items():
        assert re.match(r"^(\d{4}-\d{2}-\d{2}|unknown)", entry["date"]), rid
        if "carried_over" not in entry:  # written by ledger.record; carried-over ones may say which rows
            assert entry["commit"] == "unknown" or re.fullmatch(r"[0-9a-f]{7,40}", entry["commit"]), rid
            assert entry["tree_clean"] in (True, False, "unknown"), rid
        assert {"cpu", "cores", "memory", "gpu"} <= set(entry["machine"]), rid
        assert entry["command"] and entry["beside"], rid
        assert entry.get("figures") or entry.get("rows"), f"{rid} holds no figures"
        assert rid in used, f"record {rid} feeds no table"


def test_a_script_records_its_provenance_and_a_table_names_what_is_missing(tmp_path):
    path = ledger.record("unit", "a test of the ledger", figures={"top1": 91.5}, rows=[{"n": "1"}],
                         beside="the test suite", folder=tmp_path)
    entry = json.loads(path.read_text())
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    assert entry["commit"] == head and isinstance(entry["tree_clean"], bool)
    assert entry["machine"]["cpu"] and entry["machine"]["cores"] >= 1 and entry["versions"]["python"]
    assert entry["command"].startswith("python ") and entry["beside"] == "the test suite"
    records = ledger.load_records(tmp_path)
    table = {"id": "t", "headers": ["n", "top-1"], "separator": "|---|---:|", "record": entry["id"],
             "cells": ["{n}", "{top1:.1f} %"]}
    assert ledger.render_table(table, records) == "| n | top-1 |\n|---|---:|\n| 1 | 91.5 % |\n"
    with pytest.raises(ValueError, match=rf"table 't': record '{entry['id']}' has no figure 'top5'"):
        ledger.render_table({**table, "cells": ["{n}", "{top5}"]}, records)
    (tmp_path / "bad.json").write_text(json.dumps({"id": "bad", "what": "x"}))
    with pytest.raises(ValueError, match=r"bad\.json: record lacks \['date', 'command', 'commit'"):
        ledger.load_records(tmp_path)
