"""The results ledger: every published measurement as a record, and the docs' tables made from it.

A record is one JSON file in `benchmarks/ledger/records/`, written by the script that measured
it (`record(...)` below) or, for numbers measured before the ledger existed, carried over with
what is known and "unknown" where it is not. It holds what ran (`command`), on what code
(`commit`, and `tree_clean`: whether tracked files differed from it), when (`date`), where
(`machine`: CPU model, cores, memory, GPU), with what (`versions`), beside what (`beside`: what
else ran on the machine), and the figures (`figures`, and `rows` for a table's worth).

`benchmarks/ledger/tables.toml` says which table of which document each record feeds: the
tables in README.md, docs/*.md and benchmarks/README.md sit between `<!-- ledger: ID -->` and
`<!-- /ledger -->` and are rewritten by `render`; `check` (run by tests/test_ledger.py) fails
when a document's table differs from what its records give.

    python benchmarks/ledger.py render     # rewrite the tables from the records
    python benchmarks/ledger.py check      # exit 1 and print the tables that differ
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LEDGER = ROOT / "benchmarks" / "ledger"
RECORDS = LEDGER / "records"
TABLES = LEDGER / "tables.toml"
REQUIRED = ("id", "what", "date", "command", "commit", "tree_clean", "machine", "versions", "beside")
UNKNOWN = "unknown"
_BLOCK = re.compile(r"(<!-- ledger: (?P<id>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /ledger -->)", re.S)
_FIELD = re.compile(r"\{([^{}:!\[.]+)[^{}]*\}")  # a template's field names: "{loss[2]:.4f}" names "loss"


# -- writing a record (called by the benchmark scripts) ----------------------------------------
def record(name: str, what: str, figures: dict | None = None, rows: list[dict] | None = None,
           beside: str | None = None, folder: Path | None = None) -> Path:
    """Write the record of a measurement that just ran: `name` (the script), what was measured,
    its figures and/or rows, and the provenance this function gathers itself. `beside` says what
    else ran on the machine; by default the processes that used over 10 % of a core just now.
    The record goes to `folder`, else $KERAS_RESNET_LEDGER_DIR (the tests' and remote runs'
    choice), else the ledger."""
    folder = Path(folder or os.environ.get("KERAS_RESNET_LEDGER_DIR") or RECORDS)
    now = datetime.datetime.now(datetime.timezone.utc)
    entry = {
        "id": f"{now:%Y-%m-%d}_{name}_{now:%H%M%S}",
        "what": what,
        "date": now.isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        **git_state(),
        "machine": machine(),
        "versions": versions(),
        "beside": beside if beside is not None else busy_processes(),
        "figures": figures or {},
        "rows": rows or [],
    }
    folder.mkdir(parents=True, exist_ok=True)
    path, n = folder / f"{entry['id']}.json", 1
    while path.exists():  # two runs within a second
        n += 1
        entry["id"] = f"{now:%Y-%m-%d}_{name}_{now:%H%M%S}_{n}"
        path = folder / f"{entry['id']}.json"
    path.write_text(json.dumps(entry, indent=1, ensure_ascii=False) + "\n")
    print(f"ledger: wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}", file=sys.stderr)
    return path


def git_state(cwd: Path = ROOT) -> dict:
    """{"commit": HEAD's hash, "tree_clean": whether no tracked file differs from it}."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=cwd).stdout.strip()

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {"commit": UNKNOWN, "tree_clean": UNKNOWN}
    return {"commit": commit, "tree_clean": git("status", "--porcelain", "--untracked-files=no") == ""}


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what `platform` says."""
    try:
        model = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
    except OSError:
        model = None
    return model[1].strip() if model else platform.processor() or platform.machine()


def machine() -> dict:
    """CPU model, cores, memory and GPUs (from nvidia-smi, where there is one)."""
    cpu, memory = cpu_model(), UNKNOWN
    try:
        flags = re.search(r"^flags\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu += "".join(f", {f}" for f in ("avx512_bf16", "amx_bf16") if flags and f in flags[1].split())
    except OSError:
        pass
    try:
        kib = int(re.search(r"^MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text(), re.M)[1])
        memory = f"{kib / 2**20:.0f} GiB"
    except (OSError, TypeError):
        pass
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        gpus = smi.stdout.split("\n") if smi.returncode == 0 else []
    except (OSError, subprocess.TimeoutExpired):
        gpus = []
    return {"cpu": cpu, "cores": os.cpu_count(), "memory": memory, "gpu": [g for g in gpus if g.strip()]}


def versions() -> dict:
    """Installed versions of Python and the frameworks a measurement may use."""
    found = {"python": platform.python_version()}
    for package in ("keras", "tensorflow", "jax", "jaxlib", "torch", "keras-resnet-family", "ai-edge-litert"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return found


def busy_processes() -> str:
    """The other processes whose CPU use (`ps`: over their lifetime) is over 10 % of a core,
    or "nothing else over 10 % of a core"; the script's own children are among them."""
    try:
        out = subprocess.run(["ps", "-eo", "pid,pcpu,comm", "--sort=-pcpu"], capture_output=True, text=True).stdout
    except OSError:
        return UNKNOWN
    busy = []
    for line in out.splitlines()[1:]:
        pid, pcpu, comm = line.split(None, 2)
        if float(pcpu) > 10 and int(pid) not in (os.getpid(), os.getppid()):
            busy.append(f"{comm} ({pcpu} %)")
    return ", ".join(busy) if busy else "nothing else over 10 % of a core"


# -- reading and rendering --------------------------------------------------------------------
def load_records(folder: Path = RECORDS) -> dict[str, dict]:
    """{id: record} of every record, each checked for the provenance fields."""
    records = {}
    for path in sorted(folder.glob("*.json")):
        entry = json.loads(path.read_text())
        missing = [k for k in REQUIRED if k not in entry]
        if missing:
            raise ValueError(f"{path}: record lacks {missing}; write 'unknown' where a value is not known.")
        if entry["id"] != path.stem:
            raise ValueError(f"{path}: its id {entry['id']!r} is not its file name.")
        records[entry["id"]] = entry
    return records


def load_tables(path: Path = TABLES) -> list[dict]:
    with open(path, "rb") as f:
        return tomllib.load(f)["table"]


def render_table(table: dict, records: dict[str, dict]) -> str:
    """The markdown of one table: its header, then a row per `rows` entry (a record's figures
    through the entry's cell templates) or per row of `record` (through `cells`)."""
    if "record" in table:
        entry = _get(records, table["record"], table["id"])
        rows = [(entry, _values(entry, row), table["cells"]) for row in entry["rows"]]
    else:
        rows = []
        for spec in table["rows"]:
            entry = _get(records, spec["record"], table["id"])
            row = entry["rows"][spec["row"]] if "row" in spec else {}
            rows.append((entry, _values(entry, row), spec["cells"]))
    lines = [_row(table["headers"]), table["separator"]]
    for entry, values, cells in rows:
        if len(cells) != len(table["headers"]):
            raise ValueError(f"table {table['id']!r}: a row has {len(cells)} cells for {len(table['headers'])} headers.")
        lines.append(_row([_fill(cell, values, entry["id"], table["id"]) for cell in cells]))
    return "\n".join(lines) + "\n"


def _row(cells: list[str]) -> str:
    return "|" + "|".join(f" {cell} " if cell else " " for cell in cells) + "|"


class Cell(str):
    """A published value; `{key:plain}` drops its bold and footnote marks."""

    def __format__(self, spec: str) -> str:
        if spec == "plain":
            return re.sub(r"[¹²³⁴⁵⁶⁷⁸⁹⁰]+$", "", self.replace("**", ""))
        return str.__format__(str(self), spec)


def _values(entry: dict, row: dict) -> dict:
    """What a cell template can name: the record's figures, the row's cells, `_id` and `_date`."""
    values = {**entry.get("figures", {}), **row, "_id": entry["id"], "_date": entry["date"]}
    return {k: Cell(v) if isinstance(v, str) else v for k, v in values.items()}


def _get(records: dict[str, dict], record_id: str, table_id: str) -> dict:
    if record_id not in records:
        raise ValueError(f"table {table_id!r} names record {record_id!r}, which is not in {RECORDS}.")
    return records[record_id]


def _fill(template: str, values: dict, record_id: str, table_id: str) -> str:
    missing = [key for key in _FIELD.findall(template) if key not in values]
    if missing:
        raise ValueError(f"table {table_id!r}: record {record_id!r} has no figure {missing[0]!r}.")
    return template.format_map(values)


def rendered(root: Path = ROOT) -> dict[Path, tuple[str, str]]:
    """{document: (its text now, its text with every ledger table rendered)}."""
    records, tables = load_records(), {t["id"]: t for t in load_tables()}
    out = {}
    for name in sorted({t["file"] for t in tables.values()}):
        path = root / name
        text = path.read_text()
        seen = set()

        def replace(match: re.Match) -> str:
            table_id = match["id"]
            if table_id not in tables or tables[table_id]["file"] != name:
                raise ValueError(f"{name}: ledger block {table_id!r} has no table of that id for this file.")
            seen.add(table_id)
            return match[1] + render_table(tables[table_id], records) + match[4]

        new = _BLOCK.sub(replace, text)
        unplaced = [t for t, spec in tables.items() if spec["file"] == name and t not in seen]
        if unplaced:
            raise ValueError(f"{name} has no `<!-- ledger: {unplaced[0]} -->` block for that table.")
        out[path] = (text, new)
    return out


def main(argv: list[str]) -> int:
    if argv not in (["render"], ["check"]):
        print("usage: python benchmarks/ledger.py render|check", file=sys.stderr)
        return 2
    stale = {path: new for path, (old, new) in rendered().items() if old != new}
    if argv == ["render"]:
        for path, new in stale.items():
            path.write_text(new)
            print(f"rendered {path.relative_to(ROOT)}")
        return 0
    for path in stale:
        print(f"{path.relative_to(ROOT)}: a ledger table differs from its records; run python benchmarks/ledger.py render")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
