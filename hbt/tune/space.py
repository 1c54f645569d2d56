"""Search spaces: YAML files that map dotted config keys to distributions.

A space file has two sections::

    fixed:                      # set in every trial (and in best_config.yaml)
      batching.strategy: hybrid
    params:                     # searched
      batching.alpha: {grid: [0.0, 0.25, 0.5, 0.75, 1.0]}
      train.lr: {loguniform: [1.0e-5, 1.0e-4]}
      train.temperature: {uniform: [0.02, 0.1]}
      batching.global_batch_size: {choice: [16, 32]}

Every key must be a leaf of the config tree (a typo fails at load, naming the
key and the closest real one), and every value a search can produce is
checked by building the config with :func:`hbt.config.with_overrides` before
Ray starts: each ``grid``/``choice`` value, and the two ends and an interior
point of each ``uniform``/``loguniform`` range (the interior point catches a
float range on an integer key). When the discrete values form at most
:data:`MAX_JOINT_CHECKS` combinations, every combination is checked together,
so cross-field rules (batch size vs. workers, strategy vs. languages) fail
here rather than in a trial.
"""

from __future__ import annotations

import difflib
import itertools
import math
import os
from dataclasses import dataclass, field
from typing import Any, Literal


from hbt.config import ConfigError, HBTConfig, flatten, read_yaml, with_overrides

KINDS = ("choice", "grid", "uniform", "loguniform")
# Keys a space may not set: the search sets them per trial (output_dir,
# run_name, tracking) or they configure the search itself (tune).
RESERVED_PREFIXES = ("tune.", "tracking.")
RESERVED_KEYS = ("output_dir", "run_name")
MAX_JOINT_CHECKS = 512


@dataclass(frozen=True)
class Param:
    """One searched key.

    Attributes:
        key: the dotted config key (``batching.alpha``).
        kind: ``choice`` / ``grid`` (``values``) or ``uniform`` / ``loguniform`` (``low``, ``high``).
    """

    key: str
    kind: Literal["choice", "grid", "uniform", "loguniform"]
    values: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None

    @property
    def discrete(self) -> bool:
        return self.kind in ("choice", "grid")

    def describe(self) -> str:
        """A short human form (``grid[0, 0.5, 1]``, ``loguniform(1e-05, 0.0001)``)."""
        if self.discrete:
            return f"{self.kind}[{', '.join(map(str, self.values))}]"
        return f"{self.kind}({self.low:g}, {self.high:g})"


@dataclass
class SearchSpace:
    """A parsed and validated search space.

    Attributes:
        path: where it was read from.
        fixed: dotted key -> value applied to every trial.
        params: the searched keys, in file order.
    """

    path: str
    fixed: dict[str, Any] = field(default_factory=dict)
    params: list[Param] = field(default_factory=list)

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.params]

    def grid_size(self) -> int:
        """The number of points the ``grid`` keys span (1 without any)."""
        return math.prod(len(p.values) for p in self.params if p.kind == "grid")

    def to_tune(self, search_alg: str) -> dict[str, Any]:
        """The Tune ``param_space`` (flat, dotted keys).

        ``grid`` keys become ``tune.grid_search`` under the ``grid`` search
        algorithm (enumerated exhaustively, each point ``num_samples`` times);
        under ``random`` and ``optuna`` they are sampled like ``choice``, since
        those draw ``num_samples`` trials in total.
        """
        from ray import tune

        out: dict[str, Any] = {}
        for p in self.params:
            if p.kind == "grid" and search_alg == "grid":
                out[p.key] = tune.grid_search(list(p.values))
            elif p.discrete:
                out[p.key] = tune.choice(list(p.values))
            elif p.kind == "uniform":
                out[p.key] = tune.uniform(p.low, p.high)
            else:
                out[p.key] = tune.loguniform(p.low, p.high)
        return out

    def as_dict(self) -> dict[str, Any]:
        """The YAML form (``fixed`` / ``params``), for saving next to the search."""
        params = {p.key: ({p.kind: list(p.values)} if p.discrete else {p.kind: [p.low, p.high]}) for p in self.params}
        return {"fixed": dict(self.fixed), "params": params}


def _check_key(key: Any, known: dict[str, Any], where: str) -> str:
    if not isinstance(key, str) or not key:
        raise ConfigError(f"{where}: {key!r} is not a dotted config key")
    if key in RESERVED_KEYS or key.startswith(RESERVED_PREFIXES):
        raise ConfigError(f"{where}.{key}: cannot be searched or fixed (the search sets output_dir, run_name "
                          f"and tracking per trial; tune.* configures the search itself)")
    if key not in known:
        sections = {k.split(".")[0] for k in known}
        hint = ""
        if key in sections or any(k.startswith(key + ".") for k in known):
            hint = " (a section, not a leaf key)"
        else:
            close = difflib.get_close_matches(key, list(known), n=1)
            if close:
                hint = f" (did you mean {close[0]}?)"
        raise ConfigError(f"{where}.{key}: unknown config key{hint}")
    return key


def _parse_param(key: str, spec: Any, where: str) -> Param:
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
        raise ConfigError(f"{where}.{key}: expected a mapping with exactly one of {list(KINDS)}, got {spec!r}")
    kind, arg = next(iter(spec.items()))
    if kind in ("choice", "grid"):
        if not isinstance(arg, list) or not arg:
            raise ConfigError(f"{where}.{key}: {kind} needs a non-empty list of values, got {arg!r}")
        return Param(key, kind, values=tuple(arg))
    if (not isinstance(arg, list) or len(arg) != 2
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in arg)):
        raise ConfigError(f"{where}.{key}: {kind} needs [low, high] numbers, got {arg!r}")
    low, high = float(arg[0]), float(arg[1])
    if not low < high:
        raise ConfigError(f"{where}.{key}: {kind} needs low < high, got [{low:g}, {high:g}]")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}.{key}: loguniform needs low > 0, got {low:g}")
    return Param(key, kind, low=low, high=high)


def _candidates(p: Param) -> list[Any]:
    """The values of ``p`` that validation builds a config with.

    A range is checked at both ends and at an interior point that is not a
    round number (0.382 of the way, on the log scale for loguniform), which an
    integer key rejects.
    """
    if p.discrete:
        return list(p.values)
    f = 0.382
    inner = (math.exp(math.log(p.low) + f * (math.log(p.high) - math.log(p.low))) if p.kind == "loguniform"
             else p.low + f * (p.high - p.low))
    return [p.low, inner, p.high]


def _try(cfg: HBTConfig, updates: dict[str, Any], what: str) -> None:
    try:
        with_overrides(cfg, updates)
    except ConfigError as e:
        raise ConfigError(f"{what} gives an invalid config:\n{e}") from None


def validate_space(space: SearchSpace, cfg: HBTConfig) -> None:
    """Builds the config for every value the space can produce (see the module docstring).

    Raises:
        ConfigError: naming the space file, the key and the value.
    """
    base = space.fixed
    _try(cfg, base, f"{space.path}: fixed")
    for p in space.params:
        for v in _candidates(p):
            _try(cfg, {**base, p.key: v}, f"{space.path}: params.{p.key} = {v!r}")
    discrete = [p for p in space.params if p.discrete]
    if 1 < len(discrete) and math.prod(len(p.values) for p in discrete) <= MAX_JOINT_CHECKS:
        for combo in itertools.product(*(p.values for p in discrete)):
            updates = dict(zip((p.key for p in discrete), combo))
            _try(cfg, {**base, **updates}, f"{space.path}: params combination {updates}")


def parse_space(tree: Any, cfg: HBTConfig, path: str = "<space>") -> SearchSpace:
    """Parses and validates a space given as a dict (the YAML's content).

    Args:
        tree: ``{"fixed": {...}, "params": {...}}``.
        cfg: the config the search starts from (keys and values are checked against it).
        path: named in error messages.

    Returns:
        The validated space.

    Raises:
        ConfigError: an unknown section or key, a malformed distribution, or a
            value that makes the config invalid; the message names it.
    """
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping with 'params' (and optionally 'fixed')")
    unknown = set(tree) - {"fixed", "params"}
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {sorted(unknown)} (expected 'fixed' and 'params')")
    fixed, params = tree.get("fixed") or {}, tree.get("params") or {}
    if not isinstance(fixed, dict) or not isinstance(params, dict):
        raise ConfigError(f"{path}: 'fixed' and 'params' must be mappings of dotted config keys")
    if not params:
        raise ConfigError(f"{path}: 'params' is empty: nothing to search")
    known = flatten(cfg.model_dump(mode="json"))
    space = SearchSpace(
        path=path,
        fixed={_check_key(k, known, f"{path}: fixed"): v for k, v in fixed.items()},
        params=[_parse_param(_check_key(k, known, f"{path}: params"), s, f"{path}: params") for k, s in params.items()],
    )
    both = set(space.fixed) & set(space.keys)
    if both:
        raise ConfigError(f"{path}: {sorted(both)} both fixed and searched")
    validate_space(space, cfg)
    return space


def load_space(path: str | os.PathLike, cfg: HBTConfig) -> SearchSpace:
    """Reads, parses and validates a space YAML (see :func:`parse_space`)."""
    return parse_space(read_yaml(path, "search space"), cfg, str(path))
