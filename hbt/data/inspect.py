"""``hbt data inspect``: what the batch strategies actually produce on the configured data."""

from __future__ import annotations

from collections import Counter
from typing import Any

from hbt.config import HBTConfig
from hbt.data.pipeline import iter_rows_local
from hbt.data.strategies import plan_step

STRATEGIES = ("mono", "mixed_mono", "cross", "hybrid", "single")


def strategy_stats(cfg: HBTConfig, qids: list[str], steps: int) -> dict[str, Any]:
    """Statistics of ``steps`` global batches drawn with ``cfg.batching`` over ``qids`` in stream order.

    Args:
        cfg: the config; its batching section names the strategy.
        qids: the training question ids in the order the stream yields them.
        steps: global steps to draw (the stream wraps around into new epochs).
    """
    b, langs = cfg.batching.global_batch_size, cfg.data.languages
    steps_per_epoch = max(len(qids) // b, 1)
    kinds: Counter = Counter()
    q_hist: Counter = Counter()
    p_hist: Counter = Counter()
    dup_qids = mono_multi_lang = cross_same_lang = 0
    for step in range(steps):
        epoch, i = divmod(step, steps_per_epoch)
        plan = plan_step(cfg.batching, langs, epoch, step, cfg.data.language_weights)
        kinds[plan.kind] += 1
        batch = qids[i * b : (i + 1) * b] if len(qids) >= b else qids
        dup_qids += len(batch) - len(set(batch))
        q_hist.update(langs[x] for x in plan.q_lang)
        p_hist.update(langs[x] for x in plan.p_lang)
        if plan.kind in ("mono", "single") and len(set(plan.q_lang) | set(plan.p_lang)) != 1:
            mono_multi_lang += 1
        if plan.kind == "cross":
            cross_same_lang += int((plan.q_lang == plan.p_lang).sum())
    return {
        "strategy": cfg.batching.strategy,
        "alpha": cfg.batching.alpha,
        "steps": steps,
        "batch_types": {k: v / steps for k, v in sorted(kinds.items())},
        "query_languages": dict(sorted(q_hist.items())),
        "passage_languages": dict(sorted(p_hist.items())),
        "duplicate_qids": dup_qids,
        "mono_batches_with_several_languages": mono_multi_lang,
        "cross_pairs_with_same_language": cross_same_lang,
    }


def inspect_batches(cfg: HBTConfig, steps: int = 100) -> dict[str, Any]:
    """Per-strategy statistics for the configured data, as a JSON-able dict."""
    rows, skips = iter_rows_local(cfg)
    qids = [r["qid"] for r in rows]
    out: dict[str, Any] = {"rows": len(rows), **skips.as_metrics(), "strategies": {}}
    for name in STRATEGIES:
        if name == "single" and cfg.batching.single_language not in cfg.data.languages:
            continue
        sub = cfg.model_copy(update={"batching": cfg.batching.model_copy(update={"strategy": name})})
        out["strategies"][name] = strategy_stats(sub, qids, steps)
    out["configured"] = cfg.batching.strategy
    return out
