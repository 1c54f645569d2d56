"""Every command the docs tell you to run parses, and its config (and tune space) validates.

Commands are taken from the fenced code blocks of README.md and docs/*.md, and
from the opening comment of every shipped YAML (configs/, tune_spaces/,
cluster.yaml), with ``\\`` line continuations joined and ``# ...`` comments cut:

- ``hbt ...``: parsed with :func:`hbt.cli.build_parser`; commands that take a
  config load it with :func:`hbt.config.load_config` (``hbt config validate``
  included); ``hbt tune`` also loads its ``--space`` against that config and
  runs the search-settings check (``data.dev_articles`` and the rest) that
  ``hbt tune`` runs before Ray starts. ``hbt data fetch`` and ``hbt model
  build-offline`` only parse (and fetch's dataset names are checked).
- ``python -m ray_jobs.X ...``: parsed with ``ray_jobs.X.build_parser()``, then
  the same checks as the matching ``hbt`` command.
- ``ray job submit ... -- <inner>``: the inner command as above.

Nothing trains, evaluates or starts Ray. Data existence is deferred: the checks
are the ones that run at load (``load_config`` checks ``data.languages``
against a local XQuAD-R folder when one exists), not the ``ensure_data`` step
``hbt`` runs next, so the cluster configs' node paths (``/home/ray/hbt-data/...``,
MIRACL) and ``s3://`` data validate here by structure only.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from hbt.config import PROJECT_ROOT, HbtError, load_config

DOCS = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]
YAMLS = [*sorted((PROJECT_ROOT / "configs").glob("*.yaml")), *sorted((PROJECT_ROOT / "tune_spaces").glob("*.yaml")),
         PROJECT_ROOT / "cluster.yaml"]
FENCE = re.compile(r"^\s*(```|~~~)")
SEPARATORS = {"&&", "||", ";", "|"}


@dataclass(frozen=True)
class DocCommand:
    source: str  # path relative to the project root
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: `{self.text}`"


def _logical_lines(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Joins ``\\``-continued lines; each result keeps its first line's number."""
    out: list[tuple[int, str]] = []
    buf, start = "", None
    for no, line in lines:
        if start is None:
            start = no
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        out.append((start, buf + line))
        buf, start = "", None
    if buf:
        out.append((start, buf))
    return out


def _fenced_lines(path: Path) -> list[tuple[int, str]]:
    lines, inside = [], False
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            inside = not inside
            continue
        if inside:
            lines.append((no, line))
    return lines


def _yaml_header_lines(path: Path) -> list[tuple[int, str]]:
    lines = []
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.startswith("#"):
            break
        lines.append((no, line.lstrip("#")))
    return lines


def _is_command(tokens: list[str]) -> bool:
    if not tokens:
        return False
    if tokens[0] == "hbt":
        return True
    if tokens[0] in ("python", "python3") and tokens[1:2] == ["-m"] and len(tokens) > 2:
        return tokens[2].startswith("ray_jobs")
    return tokens[:3] == ["ray", "job", "submit"]


def extract_commands(path: Path, lines: list[tuple[int, str]]) -> list[DocCommand]:
    """The hbt / ray_jobs / ray job submit commands in ``lines`` (comments cut, chains split)."""
    rel = str(path.relative_to(PROJECT_ROOT))
    found = []
    for no, text in _logical_lines(lines):
        text = text.strip().removeprefix("$ ")
        try:
            tokens = shlex.split(text, comments=True)
        except ValueError:
            continue
        part: list[str] = []
        for tok in [*tokens, ";"]:
            if tok in SEPARATORS:
                if _is_command(part):
                    found.append(DocCommand(rel, no, shlex.join(part)))
                part = []
            else:
                part.append(tok)
    return found


def all_commands() -> list[DocCommand]:
    cmds = [c for p in DOCS for c in extract_commands(p, _fenced_lines(p))]
    cmds += [c for p in YAMLS for c in extract_commands(p, _yaml_header_lines(p))]
    return cmds


COMMANDS = all_commands()


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parser.parse_args(argv)
    except SystemExit as e:
        raise AssertionError(f"does not parse (exit {e.code}): {err.getvalue().strip()}") from None


def _check_config(args: argparse.Namespace, config: str | None, tune: bool = False) -> None:
    cfg = load_config(config, args.overrides)
    if tune:
        from hbt.tune.search import check_search_settings
        from hbt.tune.space import load_space

        # A new search needs a space; a resumed one uses the space it stored.
        assert args.space or args.resume, "hbt tune needs --space (or --resume of a stopped search)"
        if args.space:
            load_space(args.space, cfg)
        check_search_settings(cfg)


def check_hbt(argv: list[str]) -> None:
    """Parses and validates ``hbt argv`` the way ``hbt`` would before doing any work."""
    from hbt.cli import build_parser

    if argv == ["--version"]:
        return
    args = _parse(build_parser(), argv)
    if args.command == "config":
        _check_config(args, args.file)
    elif args.command == "data" and args.sub == "fetch":
        from hbt.data.fetch import DATASETS

        unknown = [d for d in args.datasets if d not in DATASETS]
        assert not unknown, f"unknown dataset(s) {unknown}; known: {list(DATASETS)}"
    elif args.command in ("train", "eval", "study", "tune") or (args.command == "data" and args.sub == "inspect"):
        _with_eval_shortcuts(args)
        _check_config(args, args.config, tune=args.command == "tune")
    # model build-offline: parsing is all there is to check without building.


def _with_eval_shortcuts(args) -> None:
    """``hbt eval``'s --benchmark/--data/--langs join the overrides, as the command itself does."""
    if hasattr(args, "benchmark"):
        from hbt.eval.job import eval_shortcuts

        args.overrides = [*args.overrides, *eval_shortcuts(args.benchmark, args.data, args.langs)]


def check_ray_job(argv: list[str]) -> None:
    """Parses ``python -m ray_jobs.X argv[3:]`` with that entrypoint's parser and validates."""
    module = argv[2]
    assert module in {"ray_jobs.train", "ray_jobs.eval", "ray_jobs.evaluate", "ray_jobs.tune", "ray_jobs.study"}, (
        f"no entrypoint {module}")
    args = _parse(importlib.import_module(module).build_parser(), argv[3:])
    _with_eval_shortcuts(args)
    _check_config(args, args.config, tune=module == "ray_jobs.tune")


def check_command(tokens: list[str]) -> None:
    if tokens[0] == "hbt":
        check_hbt(tokens[1:])
    elif tokens[0].startswith("python"):
        check_ray_job(tokens)
    else:
        assert "--" in tokens, "ray job submit without `-- <entrypoint>`"
        inner = tokens[tokens.index("--") + 1:]
        assert _is_command(inner) and inner[:3] != ["ray", "job", "submit"], f"unknown entrypoint {inner[:3]}"
        check_command(inner)


@pytest.fixture(autouse=True)
def _at_project_root(monkeypatch):
    monkeypatch.chdir(PROJECT_ROOT)  # the docs' paths are relative to the repository root


def test_the_main_docs_have_commands() -> None:
    sources = {c.source for c in COMMANDS}
    assert {"README.md", "docs/cluster.md", "docs/tuning.md"} <= sources, sources


def test_docs_run_tuning_with_a_space() -> None:
    tune = [c for c in COMMANDS if re.search(r"(hbt tune|ray_jobs\.tune)\b", c.text)]
    assert any(c.source == "docs/cluster.md" for c in tune)
    # (each one also parses below, and a new search must name its --space)


@pytest.mark.parametrize("cmd", COMMANDS, ids=[f"{c.source}:{c.line}" for c in COMMANDS])
def test_command_parses_and_validates(cmd: DocCommand) -> None:
    try:
        check_command(shlex.split(cmd.text))
        error = None
    except (AssertionError, HbtError, ValueError, OSError) as e:
        error = f"{cmd}: {e}"
    if error:
        pytest.fail(error, pytrace=False)


@pytest.mark.parametrize("text, error", [
    ("hbt tune --config configs/local.yaml", "--space"),
    ("hbt tune --config configs/local.yaml --spce tune_spaces/alpha.yaml", "does not parse"),
    ("hbt train --config configs/local.yaml train.nope=1", "unknown key"),
    ("ray job submit --working-dir . -- python -m ray_jobs.tune --config configs/cluster-xlmr.yaml", "--space"),
    ("python -m ray_jobs.tune --config configs/cluster-xlmr.yaml --space tune_spaces/alpha.yaml data.dev_articles=[]",
     "dev_articles"),
])
def test_a_broken_command_fails_naming_doc_and_command(tmp_path, text: str, error: str) -> None:
    doc = PROJECT_ROOT / "docs" / "_probe.md"
    (cmd,) = extract_commands(doc, [(3, text)])
    with pytest.raises(pytest.fail.Exception) as info:
        test_command_parses_and_validates(cmd)
    msg = str(info.value)
    assert msg.startswith("docs/_probe.md:3: `") and text.split()[1] in msg and error in msg, msg


def test_extraction_joins_continuations_and_cuts_comments() -> None:
    lines = [(1, "hbt tune --config configs/local.yaml \\"), (2, "    --space tune_spaces/alpha.yaml  # the sweep"),
             (3, "cd x && hbt data fetch tatoeba"), (4, "pip install -e ."), (5, "# hbt study --config a.yaml")]
    got = [(c.line, c.text) for c in extract_commands(PROJECT_ROOT / "README.md", lines)]
    assert got == [(1, "hbt tune --config configs/local.yaml --space tune_spaces/alpha.yaml"),
                   (3, "hbt data fetch tatoeba")]


@pytest.mark.parametrize("path", YAMLS, ids=[str(p.relative_to(PROJECT_ROOT)) for p in YAMLS])
def test_every_yaml_opens_with_a_command_that_uses_it(path: Path) -> None:
    rel = str(path.relative_to(PROJECT_ROOT))
    cmds = extract_commands(path, _yaml_header_lines(path))
    uses = rel if path.parent.name != "tune_spaces" else f"--space {rel}"
    if path.name == "cluster.yaml":
        uses = "ray job submit"
    assert any(uses in c.text for c in cmds), f"{rel}: no command in its opening comment runs it: {cmds}"
