"""``hbt data inspect``: the global batches training would draw on the configured data, and what is in them.

The batches come from the training code itself: the canonical row order and
the seeded per-epoch shuffle (:class:`hbt.data.batches.GlobalBatches`), the
workers' slices, the step plan (:func:`hbt.data.strategies.plan_step`) and
the loss's false-negative mask (:func:`hbt.loss.same_passage_mask`, over the
workers' gathered groups).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import torch

from hbt.config import HBTConfig
from hbt.data.batches import GlobalBatches, canonical_order
from hbt.data.pipeline import iter_rows_local
from hbt.data.records import passage_col, stable_hash
from hbt.data.strategies import STRATEGIES, plan_step
from hbt.loss import same_passage_mask


def strategy_stats(cfg: HBTConfig, rows: list[dict[str, str]], steps: int) -> dict[str, Any]:
    """Statistics of the first ``steps`` global batches that training with ``cfg`` draws.

    Args:
        cfg: the config; its batching section names the strategy, ``ray.num_workers`` the slices.
        rows: the training rows (``qid``, ``passage_group``, ``article``) in canonical order.
        steps: global steps to draw (running into later epochs as training would).

    Returns:
        Batch types and languages, plus ``same_passage_pairs`` (candidates in a
        global batch whose text is the row's own positive in the candidate's
        language, judged on the texts, independently of the group ids), ``masked``
        (how many of those the loss masks), ``unmasked_false_negatives`` (must
        be 0), ``articles_per_batch`` (mean distinct articles, when known) and
        ``qid_duplicates``.
    """
    langs, world = cfg.data.languages, cfg.ray.max_workers
    batches = GlobalBatches(len(rows), cfg.batching.global_batch_size, cfg.batching.seed, cfg.data.shuffle)
    groups = np.array([stable_hash(r["passage_group"]) for r in rows], dtype=np.int64)
    qids = [r["qid"] for r in rows]
    articles = [r.get("article", "") for r in rows]
    kinds: Counter = Counter()
    q_hist: Counter = Counter()
    p_hist: Counter = Counter()
    dup_qids = mono_multi_lang = cross_same_lang = same_pairs = masked = unmasked = 0
    article_counts: list[int] = []
    for step in range(steps):
        epoch, index = batches.position(step)
        plan = plan_step(cfg.batching, langs, epoch, step, cfg.data.language_weights)
        kinds[plan.kind] += 1
        q_hist.update(langs[x] for x in plan.q_lang)
        p_hist.update(langs[x] for x in plan.p_lang)
        if plan.kind in ("mono", "single") and len(set(plan.q_lang) | set(plan.p_lang)) != 1:
            mono_multi_lang += 1
        if plan.kind == "cross":
            cross_same_lang += int((plan.q_lang == plan.p_lang).sum())
        global_rows = np.concatenate([batches.worker_rows(epoch, index, r, world) for r in range(world)])
        dup_qids += len(global_rows) - len({qids[i] for i in global_rows})
        if all(articles[i] for i in global_rows):
            article_counts.append(len({articles[i] for i in global_rows}))
        g_all = torch.as_tensor(groups[global_rows])  # what gather_ids hands every rank
        same = _same_passage_text(rows, global_rows, [langs[x] for x in plan.p_lang])
        same_pairs += int(same.sum())
        b = len(global_rows) // world
        for r in range(world):
            mask = same_passage_mask(g_all[r * b : (r + 1) * b], g_all, r * b)
            masked += int((mask & same[r * b : (r + 1) * b]).sum())
            unmasked += int((same[r * b : (r + 1) * b] & ~mask).sum())
    return {
        "strategy": cfg.batching.strategy,
        "alpha": cfg.batching.alpha,
        "steps": steps,
        "epochs_touched": batches.position(steps - 1)[0] + 1 if steps else 0,
        "batch_types": {k: v / steps for k, v in sorted(kinds.items())},
        "query_languages": dict(sorted(q_hist.items())),
        "passage_languages": dict(sorted(p_hist.items())),
        "qid_duplicates": dup_qids,
        "same_passage_pairs": same_pairs,
        "masked": masked,
        "unmasked_false_negatives": unmasked,
        "articles_per_batch": float(np.mean(article_counts)) if article_counts else None,
        "mono_batches_with_several_languages": mono_multi_lang,
        "cross_pairs_with_same_language": cross_same_lang,
    }


def _same_passage_text(rows: list[dict[str, str]], global_rows: np.ndarray, p_langs: list[str]) -> torch.Tensor:
    """(B, B) bool: candidate j (row j's passage in its language) is row i's own positive in that language, j != i."""
    n = len(global_rows)
    same = torch.zeros((n, n), dtype=torch.bool)
    for j, (rj, lang) in enumerate(zip(global_rows, p_langs)):
        text = rows[rj][passage_col(lang)]
        for i, ri in enumerate(global_rows):
            if i != j and rows[ri][passage_col(lang)] == text:
                same[i, j] = True
    return same


def inspect_batches(cfg: HBTConfig, steps: int = 100) -> dict[str, Any]:
    """Per-strategy statistics for the configured data, as a JSON-able dict."""
    rows, skips = iter_rows_local(cfg)
    order = canonical_order(np.array([stable_hash(r["qid"]) for r in rows], dtype=np.int64))
    rows = [rows[i] for i in order]
    out: dict[str, Any] = {"rows": len(rows), **skips.as_metrics(), "workers": cfg.ray.max_workers,
                           "global_batch_size": cfg.batching.global_batch_size, "strategies": {}}
    for name in STRATEGIES:
        if name == "single" and cfg.batching.single_language not in cfg.data.languages:
            continue
        sub = cfg.model_copy(update={"batching": cfg.batching.model_copy(update={"strategy": name})})
        out["strategies"][name] = strategy_stats(sub, rows, steps)
    out["configured"] = cfg.batching.strategy
    return out
