"""The Ray Data pipeline: read grouped rows, tokenise every translation once, hand blocks to Train.

Reading runs as one Ray read task per unit (file, folder or qrels shard) that
yields blocks as it goes. Tokenisation runs in ``map_batches`` and writes, per
row, the token ids of the query and the passage in *every* training language,
plus the qid and passage-group hashes. The tokenised blocks are materialised
once in the object store (:func:`materialize_train_table`); each Train worker
maps them (zero-copy on its node) and takes the rows that the epoch's seeded
global shuffle (:mod:`hbt.data.batches`) assigns to it, so tokenisation never
repeats per epoch and the loop never waits on a stream. The loop then picks,
per pair, the languages that the step's plan (:mod:`hbt.data.strategies`) names.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from hbt.config import HBTConfig, resolve_path
from hbt.data.readers import (
    iter_grouped_jsonl,
    iter_long_jsonl,
    iter_long_parquet,
    iter_mmarco,
    iter_xquad_dir,
    list_files,
)
from hbt.data.batches import canonical_order
from hbt.data.records import DataError, RecordGrouper, SkipLog, columns, passage_col, query_col, stable_hash

BLOCK_ROWS = 256


@dataclass(frozen=True)
class ReadUnit:
    """One read task's work: a reader name, a path and a shard."""

    kind: str
    path: str
    shard: int = 0
    num_shards: int = 1


def read_units(cfg: HBTConfig) -> list[ReadUnit]:
    """Splits the configured training data into independent read units."""
    d = cfg.data
    path = resolve_path(d.path)
    if d.format == "xquad":
        return [ReadUnit("xquad", path)]
    if d.format == "mmarco_tsv":
        return [ReadUnit("mmarco", path, k, d.num_read_tasks) for k in range(d.num_read_tasks)]
    suffix = {"jsonl": (".jsonl", ".jsonl.gz"), "grouped_jsonl": (".jsonl", ".jsonl.gz"), "parquet": (".parquet",)}[d.format]
    return [ReadUnit(d.format, f) for f in list_files(path, suffix)]


def iter_unit(unit: ReadUnit, cfg: HBTConfig, grouper: RecordGrouper, split: str = "train") -> Iterator[dict[str, str]]:
    """Grouped rows of one read unit."""
    d = cfg.data
    if unit.kind == "xquad":
        return iter_xquad_dir(unit.path, grouper, split, d.heldout_articles, d.dev_articles)
    if unit.kind == "mmarco":
        return iter_mmarco(unit.path, grouper, unit.shard, unit.num_shards)
    readers: dict[str, Callable[[str, RecordGrouper], Iterator[dict[str, str]]]] = {
        "jsonl": iter_long_jsonl,
        "parquet": iter_long_parquet,
        "grouped_jsonl": iter_grouped_jsonl,
    }
    return readers[unit.kind](unit.path, grouper)


def iter_rows_local(cfg: HBTConfig, split: str = "train") -> tuple[list[dict[str, str]], SkipLog]:
    """Reads all grouped rows in this process (small data, tests, ``data inspect``)."""
    rows: list[dict[str, str]] = []
    skips = SkipLog()
    for unit in read_units(cfg):
        grouper = RecordGrouper(cfg.data.languages, cfg.data.on_bad_record)
        rows.extend(iter_unit(unit, cfg, grouper, split))
        skips.merge(grouper.skips)
    if cfg.data.max_questions is not None:
        rows = rows[: cfg.data.max_questions]
    return rows, skips


# ---------------------------------------------------------------- Ray parts


def _skip_ledger_cls():
    import ray

    @ray.remote(num_cpus=0)
    class SkipLedger:
        """Collects skip counts from read tasks so the driver and rank 0 can log them."""

        def __init__(self) -> None:
            self.log = SkipLog()

        def add(self, log: SkipLog) -> None:
            self.log.merge(log)

        def get(self) -> SkipLog:
            return self.log

    return SkipLedger


def make_skip_ledger():
    """A Ray actor that accumulates :class:`SkipLog` counts from read tasks.

    It lives on the calling (the driver's) node and reserves no CPU: rank 0 reads it at
    every logging window, and an actor on a worker node would die with that node and
    fail every restart of the worker group.
    """
    from hbt.raysetup import pinned_here

    return _skip_ledger_cls().options(num_cpus=0, scheduling_strategy=pinned_here()).remote()


def _make_datasource(cfg: HBTConfig, split: str, ledger: Any):
    import pyarrow as pa
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    units = read_units(cfg)
    schema = pa.schema([(c, pa.string()) for c in columns(cfg.data.languages)])

    class ParallelQADatasource(Datasource):
        """Grouped parallel-QA rows, one read task per :class:`ReadUnit`."""

        def estimate_inmemory_data_size(self) -> int | None:
            return None

        def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context=None):
            tasks = []
            for unit in units:
                meta = BlockMetadata(num_rows=None, size_bytes=None, input_files=[unit.path], exec_stats=None)
                tasks.append(ReadTask(functools.partial(_read_unit_blocks, unit, cfg, split, schema, ledger), meta, schema=schema))
            return tasks

    return ParallelQADatasource()


def _read_unit_blocks(unit: ReadUnit, cfg: HBTConfig, split: str, schema, ledger) -> Iterator[Any]:
    import pyarrow as pa

    grouper = RecordGrouper(cfg.data.languages, cfg.data.on_bad_record)
    buf: list[dict[str, str]] = []
    for row in iter_unit(unit, cfg, grouper, split):
        buf.append(row)
        if len(buf) >= BLOCK_ROWS:
            yield pa.Table.from_pylist(buf, schema=schema)
            buf = []
    if buf:
        yield pa.Table.from_pylist(buf, schema=schema)
    if ledger is not None and grouper.skips.total:
        import ray

        ray.get(ledger.add.remote(grouper.skips))


def build_text_dataset(cfg: HBTConfig, split: str = "train", ledger: Any = None):
    """A streaming Ray Dataset of grouped text rows (``qid``, ``q_<lang>``, ``p_<lang>``).

    Args:
        cfg: the config (data section).
        split: XQuAD article split to read (``train``, ``dev``, ``test``, ``all``).
        ledger: optional :func:`make_skip_ledger` actor for counted skips.
    """
    import ray

    ds = ray.data.read_datasource(_make_datasource(cfg, split, ledger))
    if cfg.data.max_questions is not None:
        ds = ds.limit(cfg.data.max_questions)
    return ds


def qid_hash(qid: str) -> int:
    """A stable 63-bit hash of a question id (string columns cannot reach torch)."""
    return stable_hash(qid)


@functools.lru_cache(maxsize=4)
def _tokenizer(model_dir: str):
    from transformers import AutoTokenizer

    from hbt.model.storage import local_model_dir

    # On a cluster the model is a storage URI: the task's node fetches the tokenizer files, not the weights.
    return AutoTokenizer.from_pretrained(local_model_dir(model_dir, weights=False))


def tokenize_rows(
    batch: dict[str, np.ndarray],
    model_dir: str,
    languages: list[str],
    query_prefix: str,
    passage_prefix: str,
    max_query_length: int,
    max_passage_length: int,
) -> dict[str, np.ndarray]:
    """``map_batches`` function: token ids of every translation, padded per column.

    Returns:
        ``qid_hash`` (n,), ``group_hash`` (n,) int64; ``q_ids`` (n, L, Tq),
        ``q_len`` (n, L), ``p_ids`` (n, L, Tp), ``p_len`` (n, L): int32 arrays,
        L = len(languages), padded with the tokenizer's pad id. The loop trims
        padding per batch.
    """
    tok = _tokenizer(model_dir)
    n = len(batch["qid"])
    out: dict[str, np.ndarray] = {
        "qid_hash": np.array([stable_hash(str(q)) for q in batch["qid"]], dtype=np.int64),
        "group_hash": np.array([stable_hash(str(g)) for g in batch["passage_group"]], dtype=np.int64),
    }
    for side, prefix, max_len, col in (
        ("q", query_prefix, max_query_length, query_col),
        ("p", passage_prefix, max_passage_length, passage_col),
    ):
        ids = np.full((n, len(languages), max_len), tok.pad_token_id, dtype=np.int32)
        lens = np.zeros((n, len(languages)), dtype=np.int32)
        for li, lang in enumerate(languages):
            enc = tok([prefix + str(t) for t in batch[col(lang)]], truncation=True, max_length=max_len)["input_ids"]
            for i, seq in enumerate(enc):
                ids[i, li, : len(seq)] = seq
                lens[i, li] = len(seq)
        out[f"{side}_ids"] = ids
        out[f"{side}_len"] = lens
    return out


def build_train_dataset(cfg: HBTConfig, model_dir: str, query_prefix: str, passage_prefix: str,
                        split: str = "train", ledger: Any = None):
    """The tokenised training dataset that Ray Train workers stream from.

    Args:
        cfg: the config.
        model_dir: the tokenizer's directory.
        query_prefix, passage_prefix: the model's prefixes (e5: ``query: ``).
        split: the XQuAD article split.
        ledger: optional skip ledger actor.
    """
    ds = build_text_dataset(cfg, split, ledger)
    return ds.map_batches(
        tokenize_rows,
        batch_size=BLOCK_ROWS,
        batch_format="numpy",
        fn_kwargs=dict(
            model_dir=model_dir,
            languages=list(cfg.data.languages),
            query_prefix=query_prefix,
            passage_prefix=passage_prefix,
            max_query_length=cfg.model.max_query_length,
            max_passage_length=cfg.model.max_passage_length,
        ),
    )


def input_bytes(cfg: HBTConfig) -> int | None:
    """Bytes on local disk of the configured training data; None when it is not a local path."""
    import os

    total = 0
    for unit in read_units(cfg):
        if "://" in unit.path:
            return None
        if os.path.isdir(unit.path):
            total += sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(unit.path) for f in fs)
        elif os.path.exists(unit.path):
            total += os.path.getsize(unit.path)
        else:
            return None
    return total


def reads_in_driver(cfg: HBTConfig) -> bool:
    """Whether the training data is small enough to read and tokenise in the driver (data.driver_read_max_mb)."""
    size = input_bytes(cfg)
    return size is not None and size <= cfg.data.driver_read_max_mb * 1e6


def tokenised_rows_local(cfg: HBTConfig, model_dir: str, query_prefix: str, passage_prefix: str,
                         split: str = "train") -> tuple[dict[str, np.ndarray], SkipLog]:
    """The rows Ray Data's read + tokenise would produce, made in this process as one block.

    The same readers in the same order, the same first ``data.max_questions`` rows and the
    same :func:`tokenize_rows`: a table built either way trains identically.
    """
    rows, skips = iter_rows_local(cfg, split)
    if not rows:
        raise DataError("training data", "empty: no training rows were read")
    batch = {k: np.array([r[k] for r in rows], dtype=object) for k in rows[0]}
    block = tokenize_rows(batch, model_dir, list(cfg.data.languages), query_prefix, passage_prefix,
                          cfg.model.max_query_length, cfg.model.max_passage_length)
    return block, skips


def materialize_train_table(ds) -> list[Any]:
    """Runs the read + tokenise pipeline once and keeps its blocks in the object store.

    Returns:
        Object refs of the blocks as ``dict[str, np.ndarray]`` (what
        :func:`fetch_train_table` reads on a worker).
    """
    return ds.to_numpy_refs()


def fetch_train_table(refs: list[Any]) -> dict[str, np.ndarray]:
    """The tokenised training rows in canonical order (by qid hash), from :func:`materialize_train_table`'s refs.

    Raises:
        DataError: the same question id reached the table twice (two files, or two read tasks).
    """
    import ray

    blocks = [b for b in ray.get(list(refs)) if len(b["qid_hash"])]
    if not blocks:
        raise DataError("training data", "empty: no training rows were read")
    table = {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}
    order = canonical_order(table["qid_hash"])
    table = {k: v[order] for k, v in table.items()}
    dup = np.flatnonzero(np.diff(table["qid_hash"]) == 0)
    if dup.size:
        raise DataError("training data", f"duplicate id: {dup.size} question id(s) appear in more than one file or "
                                         "read task; every qid must be unique across the whole data set")
    return table


def assemble_pairs(batch: dict[str, Any], q_lang: Any, p_lang: Any) -> dict[str, Any]:
    """Picks each row's query and passage language and trims padding.

    Args:
        batch: rows of the tokenised table (``q_ids``, ``q_len``, ...; numpy or torch).
        q_lang, p_lang: per row, the language index for the query and the passage.

    Returns:
        ``q_input_ids``, ``q_attention_mask``, ``p_input_ids``,
        ``p_attention_mask`` (int64, dynamically padded), ``qid_hash`` and
        ``group_hash`` (int64; the loss masks candidates of a row's own group).
    """
    import torch

    batch = {k: torch.as_tensor(v) for k, v in batch.items()}
    rows = torch.arange(batch["q_ids"].shape[0])
    q_lang = torch.as_tensor(q_lang, dtype=torch.long)
    p_lang = torch.as_tensor(p_lang, dtype=torch.long)
    out = {"qid_hash": batch["qid_hash"]}
    if "group_hash" in batch:
        out["group_hash"] = batch["group_hash"]
    for side, lang in (("q", q_lang), ("p", p_lang)):
        ids = batch[f"{side}_ids"][rows, lang]
        lens = batch[f"{side}_len"][rows, lang]
        t = int(lens.max())
        ids = ids[:, :t].long()
        mask = (torch.arange(t).unsqueeze(0) < lens.unsqueeze(1)).long()
        out[f"{side}_input_ids"] = ids
        out[f"{side}_attention_mask"] = mask
    return out
