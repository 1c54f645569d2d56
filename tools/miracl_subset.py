"""Cut MIRACL to a subset the cluster's evaluation can hold (see docs/cluster.md, "MIRACL").

    python tools/miracl_subset.py --src MIRACL --dest miracl-subset --max-passages 100000 --seed 0

Per language, keeps every passage judged (any grade) for a topic of the split,
plus a seeded uniform sample of the other passages (reservoir sampling, one
pass over the corpus files), ``--max-passages`` in all. Topics and qrels are
copied unchanged, so the output has the layout ``hbt.eval.benchmarks.miracl_files``
reads and ``eval.miracl_path`` can point at it. Scores on a subset are higher
than on the full corpus (fewer distractors) and compare only with runs on the
same subset; the cut is recorded in ``SUBSET.json`` next to the data.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import shutil
from pathlib import Path

DEFAULT_LANGUAGES = "ar,es,hi,ru,th,zh"


def _open(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def subset_language(src: Path, dest: Path, lang: str, max_passages: int, seed: int, split: str = "dev") -> dict:
    """Writes one language's subset; returns its counts."""
    base = src / f"miracl-v1.0-{lang}"
    qrels = base / "qrels" / f"qrels.miracl-v1.0-{lang}-{split}.tsv"
    judged = {line.split()[2] for line in qrels.read_text(encoding="utf-8").splitlines() if line.strip()}
    corpus = sorted((src / f"miracl-corpus-v1.0-{lang}").glob("docs-*.jsonl*"))
    # (the output is one file, docs-0.jsonl.gz: hbt orders corpus files by that number)
    if not corpus:
        raise SystemExit(f"no corpus files under {src / f'miracl-corpus-v1.0-{lang}'}")
    rng = random.Random(f"{seed}:{lang}")
    kept_judged: list[str] = []
    reservoir: list[str] = []
    seen_other = 0
    room = max_passages - len(judged)
    if room < 0:
        raise SystemExit(f"{lang}: {len(judged)} judged passages exceed --max-passages {max_passages}")
    total = 0
    for f in corpus:
        with _open(f) as fh:
            for line in fh:
                if not line.strip():
                    continue
                total += 1
                if json.loads(line)["docid"] in judged:
                    kept_judged.append(line.rstrip("\n"))
                    continue
                seen_other += 1
                if len(reservoir) < room:
                    reservoir.append(line.rstrip("\n"))
                else:
                    j = rng.randrange(seen_other)
                    if j < room:
                        reservoir[j] = line.rstrip("\n")
    shutil.copytree(base, dest / base.name, dirs_exist_ok=True)
    out_dir = dest / f"miracl-corpus-v1.0-{lang}"
    out_dir.mkdir(parents=True, exist_ok=True)
    with gzip.open(out_dir / "docs-0.jsonl.gz", "wt", encoding="utf-8") as fh:
        for line in kept_judged + reservoir:
            fh.write(line + "\n")
    return {"corpus_passages": total, "judged_kept": len(kept_judged), "sampled": len(reservoir),
            "kept": len(kept_judged) + len(reservoir)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", required=True, help="MIRACL root (miracl-v1.0-<lang>/, miracl-corpus-v1.0-<lang>/)")
    ap.add_argument("--dest", required=True)
    ap.add_argument("--languages", default=DEFAULT_LANGUAGES)
    ap.add_argument("--max-passages", type=int, default=100_000, help="passages kept per language")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split", default="dev")
    args = ap.parse_args(argv)
    src, dest = Path(args.src), Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    record = {"max_passages": args.max_passages, "seed": args.seed, "split": args.split, "languages": {}}
    for lang in args.languages.split(","):
        record["languages"][lang] = subset_language(src, dest, lang, args.max_passages, args.seed, args.split)
        print(lang, record["languages"][lang], flush=True)
    (dest / "SUBSET.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    return record


if __name__ == "__main__":
    main()
