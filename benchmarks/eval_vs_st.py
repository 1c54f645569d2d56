"""``hbt eval`` vs what a user writes without hbt: sentence-transformers + ``faiss.IndexFlatIP`` + LAReQA mAP.

Both contenders evaluate the same model on the same XQuAD-R questions and
candidate pools (by default all 11 languages, every question, the full pool of
every sentence), and each runs as its own subprocess, timed end to end by this
script (interpreter start, imports, model load, data, encoding, search,
scoring and exit):

- ``hbt``: ``hbt eval --model MODEL --benchmark xquad_r --no-track --out DIR``
  with the default config (``--langs`` and ``eval.max_questions=N`` only for
  smoke runs). Phases: ``load`` and ``search_score`` from the result's
  ``info.json`` ``seconds``; ``ray_start`` from the arrival times of hbt's
  ``[hbt] starting Ray`` and ``[hbt] Ray up`` stderr lines; ``start`` =
  everything before the data load (interpreter, imports, config, model check)
  plus the Ray start; ``encode`` = ``info.json``'s encode less the Ray start
  (it includes the encoder actors' start and model load); ``finish`` = the rest
  (writing results, the summary, Ray's shutdown, exit). The mAPs come from
  ``DIR/metrics.json``.
- ``st_faiss``: this file run as ``--contender-st``: ``SentenceTransformer(path)``
  with hbt's eval settings copied (the config's ``eval.max_length`` as
  ``max_seq_length``, ``eval.batch_size``, ``eval.precision`` resolved as hbt
  resolves ``auto``: ``bf16_weights`` is ``model.to(torch.bfloat16)``, ``bf16``
  autocast, else fp32; ``torch.set_num_threads(os.cpu_count())``, the threads
  hbt's encoder actors hold together, and as many FAISS OpenMP threads);
  ``model.encode`` of the queries (``prompt_name="query"``) and of the
  candidate sentences (``prompt_name="document"``), ``normalize_embeddings=True``
  (sentence-transformers sorts by length itself); one ``faiss.IndexFlatIP`` per
  candidate pool, searched with k = the pool size (the full ranking LAReQA's
  mAP needs; in query chunks of bounded memory); the ranks of the relevant
  sentences read off the returned ids, and average precision over the full
  ranking. The data comes from hbt's own loader
  (``hbt.eval.runner.load_benchmarks``, timed as the ``load`` phase), so both
  contenders score the same queries against the same pools. Phases: ``start``
  (interpreter, imports of torch / sentence-transformers / faiss, model load),
  ``load``, ``encode``, ``search`` (index build + ``index.search``), ``score``
  (ranks and mAP), ``finish`` (exit).
- ``st_numpy`` (opt-in, ``--contenders hbt,st_faiss,st_numpy``): the same, but
  the ranks are counted from numpy score rows (``q @ c.T``) instead of a full
  FAISS search: a user who knows that a full ranking needs no top-k selection.

The LAReQA settings, as hbt defines them (docs/metrics.md): ``multilingual``:
every query against the pool of every language's sentences, relevant = the
answer sentence in each language the question exists in, mean over queries;
``monolingual``: per language X, X's queries against X's sentences, mean over
languages; ``cross_lingual``: per ordered pair X != Y, X's queries against Y's
sentences, mean over pairs. Ties: hbt orders scores within 1e-6 by candidate id
(``hbt.eval.metrics.TIE_RTOL``); ``st_faiss`` takes FAISS's order as a user
would, ``st_numpy`` breaks exact ties by id. Either way the difference is at
the level of a few duplicated sentences and shows in ``map_abs_diff``.

hbt's search and scoring are one pass (the relevant candidates' ranks are
counted from the same matrix product that scores them), so its phases have one
``search_score``; the sentence-transformers contender's ``search`` and ``score``
are reported apart and summed for the ratio.

Targets: ``hbt`` >= 1.0x ``st_faiss`` end to end (``speed_ratio_end_to_end`` =
st_faiss seconds / hbt seconds), and the three mAPs within 0.005.

Run it on an otherwise idle machine: with other jobs on the cores, a torch
forward on 2 threads (the sentence-transformers contender) can run tens of
times slower than on 1 (its OpenMP threads wait on each other; seen here at a
load average of 20: a tiny model's encode took 34 s on 2 threads, 0.3 s on 1),
while hbt's 1-thread encoder actors do not, which would flatter hbt. The JSON's
``machine.loadavg_start``/``busy_processes_start``/``loadavg_end`` say whether
that happened.

With ``--reps`` > 1 the contenders run interleaved, their order rotating per
repetition, and the medians are reported. The first run of a session pays the
disk reads of the model and data (cold page cache): run ``--reps 2`` or more for
a fair first place.

Command (the full benchmark: minutes per contender on 2 cores):

    timeout 7200 python benchmarks/eval_vs_st.py --reps 3 --out benchmarks/results/eval_vs_st.json

Smoke run (a tiny sample, seconds of work beside the start-up):

    python benchmarks/eval_vs_st.py --langs en,de --max-questions 20 --reps 1
"""

from __future__ import annotations

import time

T_IMPORT = time.time()  # the child contender's clock starts here (the parent times from its Popen)

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PROJECT_ROOT, claim_stdout, emit, log, machine, median, ratio, rotate  # noqa: E402

MAP_TOL = 0.005
SETTINGS = ("multilingual", "monolingual", "cross_lingual")
CONTENDERS = ("hbt", "st_faiss", "st_numpy")
PHASES = ("start", "load", "encode", "search_score", "finish")
CHUNK_BYTES = 256 * 2**20  # per search chunk: scores + ids + positions of (chunk x pool)


# --------------------------------------------------------------------------------------------------
# The configuration both contenders share
# --------------------------------------------------------------------------------------------------


def overrides_for(langs: str | None, max_questions: int | None, extra: list[str]) -> list[str]:
    """The config overrides ``hbt eval --benchmark xquad_r [--langs L] [eval.max_questions=N]`` applies."""
    from hbt.eval.job import eval_shortcuts

    out = eval_shortcuts("xquad_r", None, langs)
    if max_questions:
        out.append(f"eval.max_questions={max_questions}")
    return out + list(extra)


# --------------------------------------------------------------------------------------------------
# The sentence-transformers + FAISS contender (a subprocess of its own)
# --------------------------------------------------------------------------------------------------


def _ap(ranks: Any) -> float:
    """Average precision over the full ranking from the 1-based ranks of the relevant items."""
    import numpy as np

    r = np.sort(np.asarray(ranks, dtype=np.float64))
    return float(np.mean(np.arange(1, r.size + 1) / r)) if r.size else 0.0


def _ranks_faiss(index: Any, q: Any, rel: list[Any], timer: dict[str, float]) -> list[Any]:
    """Ranks of each query's relevant pool items from a full-depth ``index.search`` (k = pool size)."""
    import numpy as np

    n = index.ntotal
    chunk = max(1, CHUNK_BYTES // (20 * n))
    out: list[Any] = []
    for s in range(0, len(q), chunk):
        t = time.perf_counter()
        _, ids = index.search(q[s : s + chunk], n)
        t1 = time.perf_counter()
        timer["search"] += t1 - t
        pos = np.empty_like(ids)  # pos[i, c]: 1-based rank of candidate c for query i
        pos[np.arange(ids.shape[0])[:, None], ids] = np.arange(1, n + 1)
        out.extend(pos[i, rel[s + i]] for i in range(ids.shape[0]))
        timer["score"] += time.perf_counter() - t1
    return out


def _ranks_numpy(c: Any, q: Any, rel: list[Any], timer: dict[str, float]) -> list[Any]:
    """Ranks from numpy score rows: ``1 + #(s > s_r) + #(s == s_r, id < r)``."""
    import numpy as np

    n = c.shape[0]
    chunk = max(1, CHUNK_BYTES // (8 * n))
    ids = np.arange(n)
    out: list[Any] = []
    for s in range(0, len(q), chunk):
        t = time.perf_counter()
        scores = q[s : s + chunk] @ c.T
        t1 = time.perf_counter()
        timer["search"] += t1 - t
        for i in range(scores.shape[0]):
            r = np.asarray(rel[s + i], dtype=np.int64)
            row, sr = scores[i][None, :], scores[i, r][:, None]
            out.append(1 + np.count_nonzero((row > sr) | ((row == sr) & (ids[None, :] < r[:, None])), axis=1))
        timer["score"] += time.perf_counter() - t1
    return out


def run_st_contender(args: argparse.Namespace) -> None:
    """The user's script: SentenceTransformer encode, FAISS (or numpy) full ranking, LAReQA mAP."""
    stamps: dict[str, float] = {"import": T_IMPORT}
    import numpy as np
    import torch
    import faiss
    from sentence_transformers import SentenceTransformer

    from hbt.config import load_config
    from hbt.hardware import resolve_precision
    from hbt.model.offline import resolve_model_path

    stamps["imports"] = time.time()
    # hbt's eval settings (the defaults unless --langs / --max-questions), copied to the user's script.
    cfg = load_config(None, overrides_for(args.langs, args.max_questions, args.override))
    precision = resolve_precision(cfg.eval.precision, False)
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    model = SentenceTransformer(resolve_model_path(args.model), device="cpu")
    model.max_seq_length = cfg.eval.max_length
    if precision == "bf16_weights":
        model.to(torch.bfloat16)
    stamps["model"] = time.time()

    from hbt.eval.runner import load_benchmarks

    bench = load_benchmarks(cfg, "test")["xquad_r"]
    stamps["load"] = time.time()

    def encode(texts: list[str], prompt_name: str) -> Any:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            emb = model.encode(texts, prompt_name=prompt_name, batch_size=cfg.eval.batch_size,
                               normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        return np.ascontiguousarray(np.asarray(emb, dtype=np.float32))

    q_emb = encode(list(bench.query_texts), "query")
    c_emb = encode(list(bench.cand_texts), "document")
    stamps["encode"] = time.time()

    timer = {"search": 0.0, "score": 0.0}
    L = list(bench.languages)
    q_lang = np.asarray(bench.query_langs)
    c_lang = np.asarray(bench.cand_langs)
    answers = [bench.answers[qid] for qid in bench.query_qids]

    def ranks_in_pool(pool: Any, queries: Any, rel_global: list[Any]) -> list[Any]:
        local = np.full(len(c_lang), -1, np.int64)
        local[pool] = np.arange(pool.size)
        rel = [local[np.asarray(r, dtype=np.int64)] for r in rel_global]
        t = time.perf_counter()
        if args.st_search == "faiss":
            index = faiss.IndexFlatIP(c_emb.shape[1])
            index.add(c_emb[pool])
            timer["search"] += time.perf_counter() - t
            return _ranks_faiss(index, q_emb[queries], rel, timer)
        c = np.ascontiguousarray(c_emb[pool])
        timer["search"] += time.perf_counter() - t
        return _ranks_numpy(c, q_emb[queries], rel, timer)

    ap_pair: dict[tuple[str, str], list[float]] = {}
    for y in L:  # monolingual and cross-lingual: every language's queries against language y's sentences
        pool = np.flatnonzero(c_lang == y)
        queries = np.array([i for i in range(len(answers)) if y in answers[i]], dtype=np.int64)
        ranks = ranks_in_pool(pool, queries, [[answers[i][y]] for i in queries])
        t = time.perf_counter()
        for i, r in zip(queries, ranks):
            ap_pair.setdefault((str(q_lang[i]), y), []).append(_ap(r))
        timer["score"] += time.perf_counter() - t
    everything = np.arange(len(c_lang))
    all_q = np.arange(len(answers))
    ranks = ranks_in_pool(everything, all_q, [sorted(answers[i][x] for x in L if x in answers[i]) for i in all_q])
    t = time.perf_counter()
    multi = float(np.mean([_ap(r) for r in ranks]))
    mono = float(np.mean([np.mean(ap_pair[(x, x)]) for x in L]))
    cross_pairs = [np.mean(v) for (x, y), v in ap_pair.items() if x != y and v]
    cross = float(np.mean(cross_pairs)) if cross_pairs else float("nan")
    timer["score"] += time.perf_counter() - t
    stamps["search_score"] = time.time()
    result = {
        "stamps": stamps, "search_s": timer["search"], "score_s": timer["score"],
        "mAP": {"multilingual": multi, "monolingual": mono, "cross_lingual": cross},
        "config": {"precision": precision, "threads": threads, "faiss_threads": threads,
                   "batch_size": cfg.eval.batch_size, "max_seq_length": model.max_seq_length,
                   "search": "faiss.IndexFlatIP k=pool" if args.st_search == "faiss" else "numpy q @ c.T",
                   "sentence_transformers": __import__("sentence_transformers").__version__,
                   "faiss": faiss.__version__},
        "sizes": {"queries": len(answers), "candidates": len(c_lang), "languages": L},
    }
    Path(args.contender_st).write_text(json.dumps(result), encoding="utf-8")


# --------------------------------------------------------------------------------------------------
# The parent: runs the contenders as subprocesses and compares
# --------------------------------------------------------------------------------------------------


def _run_timed(cmd: list[str], tag: str, timeout: float) -> tuple[float, float, list[tuple[float, str]]]:
    """Runs ``cmd`` from the project root; its stderr lines are timestamped on arrival and forwarded.

    Returns:
        (the Popen time, the wall seconds to exit, [(arrival time, line)]).
    """
    lines: list[tuple[float, str]] = []
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=sys.stderr.fileno(), stderr=subprocess.PIPE, text=True,
                            bufsize=1)

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append((time.time(), line.rstrip("\n")))
            print(f"[{tag}] {line}", end="", file=sys.stderr, flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise SystemExit(f"{tag} ran past {timeout:.0f} s")
    wall = time.time() - t0
    reader.join(timeout=30)
    if rc != 0:
        tail = "\n".join(x for _, x in lines[-40:])
        raise SystemExit(f"{tag} failed with exit status {rc}:\n{tail}")
    return t0, wall, lines


def _hbt_cmd(args: argparse.Namespace, out_dir: Path) -> list[str]:
    exe = shutil.which("hbt", path=str(Path(sys.executable).parent)) or shutil.which("hbt")
    base = [exe] if exe else [sys.executable, "-m", "hbt.cli"]
    cmd = [*base, "eval", "--model", args.model, "--benchmark", "xquad_r", "--no-track", "--out", str(out_dir)]
    if args.langs:
        cmd += ["--langs", args.langs]
    if args.max_questions:
        cmd.append(f"eval.max_questions={args.max_questions}")
    return cmd + list(args.override)


def _st_cmd(args: argparse.Namespace, result_file: Path, search: str) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--contender-st", str(result_file), "--model", args.model,
           "--st-search", search]
    if args.langs:
        cmd += ["--langs", args.langs]
    if args.max_questions:
        cmd += ["--max-questions", str(args.max_questions)]
    for o in args.override:
        cmd += ["--override", o]
    return cmd


def run_hbt(args: argparse.Namespace, workdir: Path, rep: int) -> dict[str, Any]:
    """One ``hbt eval`` subprocess, timed end to end, with its phases and mAPs."""
    out = workdir / f"hbt-{rep}"
    cmd = _hbt_cmd(args, out)
    t0, wall, lines = _run_timed(cmd, "hbt", args.timeout)
    info = json.loads((out / "info.json").read_text(encoding="utf-8"))
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    sec = info["seconds"]
    starting = next((t for t, x in lines if x.startswith("[hbt] starting Ray")), None)
    up = next((t for t, x in lines if x.startswith("[hbt] Ray up")), None)
    ray_start = up - starting if starting is not None and up is not None else float("nan")
    before_load = (starting - sec["load"] - t0) if starting is not None else float("nan")
    phases = {"start": before_load + ray_start, "load": sec["load"], "encode": sec["encode"] - ray_start,
              "search_score": sec["score"]}
    phases["finish"] = wall - sum(phases.values())
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    return {"wall_s": round(wall, 2), "phases": {k: round(v, 2) for k, v in phases.items()},
            "ray_start_s": round(ray_start, 2), "before_load_s": round(before_load, 2), "info_seconds": sec,
            "config": {k: info.get(k) for k in ("precision", "num_encoders", "search", "texts", "unique_texts")},
            "sizes": {"queries": info["xquad_r"]["queries"], "candidates": info["xquad_r"]["candidates"],
                      "languages": info["xquad_r"]["languages"]},
            "mAP": {s: metrics[f"xquad_r/{s}/mAP"] for s in SETTINGS}, "command": cmd}


def run_st(args: argparse.Namespace, workdir: Path, rep: int, name: str) -> dict[str, Any]:
    """One sentence-transformers contender subprocess, timed end to end."""
    result_file = workdir / f"{name}-{rep}.json"
    cmd = _st_cmd(args, result_file, "faiss" if name == "st_faiss" else "numpy")
    t0, wall, _ = _run_timed(cmd, name, args.timeout)
    r = json.loads(result_file.read_text(encoding="utf-8"))
    st = r["stamps"]
    phases = {"start": st["model"] - t0, "load": st["load"] - st["model"], "encode": st["encode"] - st["load"],
              "search_score": st["search_score"] - st["encode"]}
    phases["finish"] = wall - sum(phases.values())
    return {"wall_s": round(wall, 2), "phases": {k: round(v, 2) for k, v in phases.items()},
            "imports_s": round(st["imports"] - t0, 2), "model_load_s": round(st["model"] - st["imports"], 2),
            "search_s": round(r["search_s"], 2), "score_s": round(r["score_s"], 2),
            "config": r["config"], "sizes": r["sizes"], "mAP": r["mAP"], "command": cmd}


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="offline:multilingual-e5-small",
                    help="what `hbt eval --model` takes; a sentence-transformers directory (or offline:...) for "
                         "the sentence-transformers contender")
    ap.add_argument("--langs", default=None, help="comma-separated subset (smoke runs; default: all 11)")
    ap.add_argument("--max-questions", type=int, default=None, help="eval.max_questions (smoke runs only)")
    ap.add_argument("--contenders", default="hbt,st_faiss", help=f"comma-separated, of {','.join(CONTENDERS)}")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per contender run")
    ap.add_argument("--override", action="append", default=[],
                    help="a.b=c config override for both contenders (not for the reported comparison, which "
                         "uses the defaults)")
    ap.add_argument("--keep", action="store_true", help="keep hbt's result folders (printed on stderr)")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    ap.add_argument("--contender-st", default=None, metavar="RESULT", help=argparse.SUPPRESS)
    ap.add_argument("--st-search", default="faiss", choices=("faiss", "numpy"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.contender_st:
        run_st_contender(args)
        return None
    claim_stdout()
    names = [c for c in args.contenders.split(",") if c]
    unknown = [c for c in names if c not in CONTENDERS]
    if unknown or "hbt" not in names or len(names) < 2:
        raise SystemExit(f"--contenders: hbt and at least one of st_faiss, st_numpy; got {names}")

    info = machine()
    workdir = Path(tempfile.mkdtemp(prefix="hbt-bench-vs-st-"))
    raw: dict[str, list[dict[str, Any]]] = {c: [] for c in names}
    try:
        for rep in range(args.reps):
            for name in rotate(names, rep):
                log(f"rep {rep + 1}/{args.reps}: {name}")
                r = run_hbt(args, workdir, rep) if name == "hbt" else run_st(args, workdir, rep, name)
                log(f"  {name}: {r['wall_s']} s, phases {r['phases']}, mAP {r['mAP']}")
                raw[name].append(r)
    finally:
        if args.keep:
            log(f"hbt's results kept under {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    summary: dict[str, Any] = {}
    for name, rs in raw.items():
        s: dict[str, Any] = {"wall_s_median": median([r["wall_s"] for r in rs]),
                             "phases_median": {p: round(median([r["phases"][p] for r in rs]), 2) for p in PHASES},
                             "mAP": rs[0]["mAP"], "config": rs[0]["config"], "sizes": rs[0]["sizes"]}
        if name == "hbt":
            s["ray_start_s_median"] = median([r["ray_start_s"] for r in rs])
        else:
            s["search_s_median"] = median([r["search_s"] for r in rs])
            s["score_s_median"] = median([r["score_s"] for r in rs])
            s["imports_s_median"] = median([r["imports_s"] for r in rs])
            s["model_load_s_median"] = median([r["model_load_s"] for r in rs])
        summary[name] = s

    hbt = summary["hbt"]
    comparisons: dict[str, Any] = {}
    targets: dict[str, bool] = {}
    for name in names:
        if name == "hbt":
            continue
        other = summary[name]
        diff = {k: round(abs(other["mAP"][k] - hbt["mAP"][k]), 5) for k in SETTINGS}
        within = {k: diff[k] <= MAP_TOL for k in SETTINGS}
        same_data = other["sizes"] == hbt["sizes"]
        comparisons[name] = {
            # > 1: hbt is faster.
            "speed_ratio_end_to_end": ratio(other["wall_s_median"], hbt["wall_s_median"]),
            "speed_ratio_per_phase": {p: ratio(other["phases_median"][p], hbt["phases_median"][p]) for p in PHASES},
            "map_abs_diff": diff, f"map_within_{MAP_TOL}": within, "same_queries_and_pools": same_data,
        }
        e2e = comparisons[name]["speed_ratio_end_to_end"]
        targets[f"hbt >= 1.0x {name} end to end"] = bool(e2e == e2e and e2e >= 1.0)
        targets[f"{name}: all three mAPs within {MAP_TOL} of hbt"] = all(within.values()) and same_data
    first = comparisons.get("st_faiss") or next(iter(comparisons.values()))
    result = {
        "benchmark": "eval_vs_st",
        "setup": {"model": args.model, "benchmark": "xquad_r", "languages": args.langs or "all 11",
                  "max_questions": args.max_questions, "overrides": args.override, "reps": args.reps,
                  "contenders": names, "order": "rotated per repetition", "cores": os.cpu_count()},
        "commands": {name: raw[name][0]["command"] for name in names},
        "speed_ratio_end_to_end": first["speed_ratio_end_to_end"],
        "speed_ratio_per_phase": first["speed_ratio_per_phase"],
        "map_abs_diff": first["map_abs_diff"],
        f"map_within_{MAP_TOL}": first[f"map_within_{MAP_TOL}"],
        "comparisons": comparisons,
        "summary": summary,
        "targets_met": targets,
        "notes": ["ratios are contender seconds / hbt seconds: > 1 means hbt is faster",
                  "hbt's search and scoring are one pass: its phases have search_score only; the "
                  "sentence-transformers contenders' search_s and score_s sum to theirs",
                  "hbt's encode phase includes its encoder actors' start and model load; the "
                  "sentence-transformers start phase includes its model load",
                  "start: interpreter, imports and (hbt) config checks and Ray's start; finish: writing results "
                  "and exit (hbt: Ray's shutdown)"],
        "machine": info,
        "raw": raw,
    }
    emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
