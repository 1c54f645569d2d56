"""File reading shared by the benchmark loaders: every failure names the file and line."""

from __future__ import annotations

from pathlib import Path

from hbt.data.records import ItemError

# Every benchmark-file error names the file and the item; one class with the
# training readers' errors (hbt.data.records.DataError), so the CLI treats them alike.
BenchmarkError = ItemError


def read_lines(path: Path) -> list[str]:
    data = path.read_bytes()
    try:
        raw = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise BenchmarkError(path, f"not UTF-8 ({e.reason})", f"line {line}") from None
    lines = raw.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln.rstrip("\r") for ln in lines]
