"""Bad training input through the CLI (``hbt data inspect``, no Ray): exit 2, one ``error:`` line naming
the file (and line or record), no traceback; skip mode counts a bad line instead of dropping the file."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from hbt.config import PROJECT_ROOT

LANGS = ["en", "de"]


def _long_lines(n: int = 4) -> list[str]:
    return [json.dumps({"qid": str(i), "lang": lang, "query": f"q{i} {lang}", "passage": f"p{i} {lang}"})
            for i in range(n) for lang in LANGS]


def _inspect(path: Path, fmt: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hbt.cli", "data", "inspect", "--steps", "2", f"data.path={path}", f"data.format={fmt}",
         f"data.languages=[{','.join(LANGS)}]", "batching.global_batch_size=2", "ray.num_workers=1", *extra],
        capture_output=True, text=True, timeout=300, cwd=PROJECT_ROOT)


def _squad(tmp_path: Path, article, answers=None) -> Path:
    folder = tmp_path / "squad"
    folder.mkdir()
    par = {"context": "A b. C d.", "qas": [{"id": "q1", "question": "what?",
                                            "answers": answers or [{"text": "A b", "answer_start": 0}]}]}
    for lang in LANGS:
        doc = {"data": [article, {"title": "T", "paragraphs": [par]}] if article is not None
               else [{"title": "T", "paragraphs": [par]}]}
        (folder / f"{lang}.json").write_text(json.dumps(doc), encoding="utf-8")
    return folder


def _bad_utf8(tmp_path: Path) -> Path:
    f = tmp_path / "bad.jsonl"
    good = _long_lines()
    bad = b'{"qid": "x", "lang": "en", "query": "caf\xe9", "passage": "p"}'  # latin-1, not UTF-8
    f.write_bytes(("\n".join(good[:2]) + "\n").encode() + bad + b"\n" + ("\n".join(good[2:]) + "\n").encode())
    return f


def _empty_jsonl(tmp_path):
    f = tmp_path / "empty.jsonl"
    f.write_text("")
    return f, "jsonl", f"error: {f}: empty file"


def _empty_grouped(tmp_path):
    f = tmp_path / "empty.jsonl"
    f.write_text("\n\n")
    return f, "grouped_jsonl", f"error: {f}: empty file"


def _strict_utf8(tmp_path):
    f = _bad_utf8(tmp_path)
    return f, "jsonl", f"error: {f}:3: not UTF-8"


def _article(tmp_path):
    d = _squad(tmp_path, "not an article")
    return d, "xquad", f"error: {d}/en.json [article 0]: expected an object, got str"


def _answer(tmp_path):
    d = _squad(tmp_path, None, answers=[{"text": "A b", "answer_start": 0}, "A b"])
    return d, "xquad", f"error: {d}/en.json [question q1]: answer 1 should be an object, got str"


def _empty_parquet(tmp_path):
    f = tmp_path / "train.parquet"
    f.write_bytes(b"")
    return f, "parquet", f"error: {f}: not a readable Parquet file"


def _truncated_gz(tmp_path):
    f = tmp_path / "train.jsonl.gz"
    whole = gzip.compress(("\n".join(_long_lines(50)) + "\n").encode())
    f.write_bytes(whole[: len(whole) // 2])
    return f, "jsonl", f"error: {f}: unreadable file"


@pytest.mark.parametrize("make", [_empty_jsonl, _empty_grouped, _strict_utf8, _article, _answer, _empty_parquet,
                                  _truncated_gz], ids=lambda f: f.__name__.strip("_"))
def test_bad_input_is_one_named_error_line(tmp_path, make):
    path, fmt, start = make(tmp_path)
    out = _inspect(path, fmt)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(start), out.stderr


def test_skip_mode_counts_the_non_utf8_line_and_keeps_the_file(tmp_path):
    out = _inspect(_bad_utf8(tmp_path), "jsonl", "data.on_bad_record=skip")
    assert out.returncode == 0, out.stderr
    stats = json.loads(out.stdout)
    assert stats["rows"] == 4  # every good qid of the file, only the bad line left out
    assert stats["data/skipped_records"] == 1 and stats["data/skipped/not_utf_8"] == 1
