"""The Ray Data pipeline: streaming, tokenisation, worker shards, counted skips."""

from __future__ import annotations

import json

import numpy as np
import pytest
import ray
import torch

from hbt.config import load_config
from hbt.data.batches import GlobalBatches
from hbt.data.pipeline import (
    assemble_pairs,
    build_text_dataset,
    build_train_dataset,
    fetch_train_table,
    make_skip_ledger,
    materialize_train_table,
    reads_in_driver,
    tokenised_rows_local,
)
from hbt.data.records import DataError
from hbt.data.strategies import plan_step


def _grouped_file(path, n, langs=("en", "de"), bad_every=0):
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            if bad_every and i % bad_every == 0:
                f.write("{not json\n")
                continue
            tr = {lang: {"query": f"{lang} question number {i} " * 3, "passage": f"{lang} passage {i} " * 8} for lang in langs}
            f.write(json.dumps({"qid": f"q{i}", "translations": tr}) + "\n")


def test_read_task_streams_block_by_block(tmp_path, ray_local):
    """One read task over one file yields many small blocks (so reading overlaps what follows), not one."""
    _grouped_file(tmp_path / "big.jsonl", 20_000)
    cfg = load_config(None, [f"data.path={tmp_path}", "data.format=grouped_jsonl", "data.languages=[en,de]"])
    ds = build_text_dataset(cfg).materialize()
    assert ds.count() == 20_000
    sizes = [entry.metadata.num_rows for bundle in ds.iter_internal_ref_bundles() for entry in bundle.blocks]
    assert sum(sizes) == 20_000
    assert len(sizes) >= 20_000 // 256 and max(sizes) <= 256  # BLOCK_ROWS at a time


def test_tokenised_table_feeds_disjoint_worker_batches(tiny_model_dir, ray_local):
    """Read + tokenise once (Ray Data), fetch the table as a worker does, slice batches as the loop does."""
    cfg = load_config(None, ["data.languages=[en,de,zh]", "data.max_questions=48", "batching.global_batch_size=8",
                             "model.max_query_length=24", "model.max_passage_length=40"])
    refs = materialize_train_table(build_train_dataset(cfg, str(tiny_model_dir), "query: ", "passage: "))
    table = fetch_train_table(refs)
    assert table["q_ids"].shape == (48, 3, 24) and table["p_ids"].shape == (48, 3, 40)
    assert np.all(np.diff(table["qid_hash"]) > 0)  # canonical order, unique qids
    # The same rows in another block order give the same table (what makes resume exact).
    again = fetch_train_table(list(reversed(refs)))
    assert all(np.array_equal(table[k], again[k]) for k in table)
    gb = GlobalBatches(48, 8, seed=0)
    seen: list[set[int]] = [set(), set()]
    for step in range(gb.steps_per_epoch):
        plan = plan_step(cfg.batching, cfg.data.languages, 0, step)
        for rank in (0, 1):
            rows = gb.worker_rows(0, step, rank, 2)
            p = plan.slice(rank, 2)
            pairs = assemble_pairs({k: v[rows] for k, v in table.items()}, p.q_lang, p.p_lang)
            assert pairs["q_input_ids"].shape[0] == 4 and pairs["group_hash"].shape == (4,)
            lens = torch.as_tensor(table["q_len"][rows][np.arange(4), p.q_lang])
            assert torch.equal(pairs["q_attention_mask"].sum(1), lens)
            # Dynamic padding: the longest row fills the width exactly.
            assert pairs["p_attention_mask"][:, -1].any()
            seen[rank].update(pairs["qid_hash"].tolist())
    assert len(seen[0]) == len(seen[1]) == 24
    assert not seen[0] & seen[1]  # the workers' shards are disjoint in question ids


@pytest.mark.parametrize("skip", [False, True])
def test_the_driver_read_builds_the_table_ray_data_builds(tmp_path, tiny_model_dir, ray_local, skip):
    """Small data is read and tokenised in the driver: the same rows, ids and skip counts as Ray Data's tasks."""
    _grouped_file(tmp_path / "a.jsonl", 60, bad_every=7 if skip else 0)
    cfg = load_config(None, [f"data.path={tmp_path}", "data.format=grouped_jsonl", "data.languages=[en,de]",
                             "data.max_questions=40", f"data.on_bad_record={'skip' if skip else 'error'}",
                             "model.max_query_length=24", "model.max_passage_length=40"])
    assert reads_in_driver(cfg)
    assert not reads_in_driver(cfg.model_copy(update={"data": cfg.data.model_copy(update={"driver_read_max_mb": 0})}))
    ledger = make_skip_ledger()
    ray_table = fetch_train_table(materialize_train_table(
        build_train_dataset(cfg, str(tiny_model_dir), "query: ", "passage: ", ledger=ledger)))
    block, skips = tokenised_rows_local(cfg, str(tiny_model_dir), "query: ", "passage: ")
    local = fetch_train_table([ray.put(block)])
    assert set(local) == set(ray_table) and all(np.array_equal(local[k], ray_table[k]) for k in local)
    assert skips.total == ray.get(ledger.get.remote()).total == (9 if skip else 0)


def test_the_same_qid_in_two_files_is_refused(tmp_path, tiny_model_dir, ray_local):
    _grouped_file(tmp_path / "a.jsonl", 10)
    _grouped_file(tmp_path / "b.jsonl", 10)  # the same q0..q9 again
    cfg = load_config(None, [f"data.path={tmp_path}", "data.format=grouped_jsonl", "data.languages=[en,de]"])
    refs = materialize_train_table(build_train_dataset(cfg, str(tiny_model_dir), "query: ", "passage: "))
    with pytest.raises(DataError, match="duplicate id: 10 question id"):
        fetch_train_table(refs)


def test_skips_are_counted_in_the_ledger(tmp_path, ray_local):
    _grouped_file(tmp_path / "a.jsonl", 100, bad_every=10)
    cfg = load_config(None, [f"data.path={tmp_path}", "data.format=grouped_jsonl", "data.languages=[en,de]",
                             "data.on_bad_record=skip"])
    ledger = make_skip_ledger()
    assert build_text_dataset(cfg, ledger=ledger).count() == 90
    log = ray_local.get(ledger.get.remote())
    assert log.total == 10 and log.as_metrics()["data/skipped/malformed_json"] == 10


def test_bad_record_error_reaches_the_driver_with_file_and_line(tmp_path, ray_local):
    _grouped_file(tmp_path / "a.jsonl", 30, bad_every=25)
    cfg = load_config(None, [f"data.path={tmp_path}", "data.format=grouped_jsonl", "data.languages=[en,de]"])
    with pytest.raises(Exception, match=r"a\.jsonl:1: malformed JSON"):
        build_text_dataset(cfg).count()
