"""The reward registry: names -> factories, ``register_reward``, and ``make_reward_fn``, which
builds a ``Reward`` from any accepted form (a name, a dict, a weighted sum, a callable)."""

from __future__ import annotations

import importlib
import inspect
import math
import numbers
from collections.abc import Callable
from typing import Any

from textenv.rewards.model import RewardModel
from textenv.rewards.protocol import (
    BatchedCallable,
    PerSample,
    Reward,
    WeightedSum,
    _callable_name,
    _n_positional,
)
from textenv.rewards.rules import EditDistance, ExactAnswer, GoldReward, Length, Repetition

_REGISTRY: dict[str, Callable[..., Any]] = {
    "edit_distance": EditDistance,
    "repetition": Repetition,
    "length": Length,
    "reward_model": RewardModel,
    "gold": GoldReward,
    "exact_answer": ExactAnswer,
}


def register_reward(name: str, factory: Callable[..., Any], overwrite: bool = False) -> None:
    """Register a reward under ``name``.

    ``factory(**kwargs)`` returns any accepted reward form (a ``Reward`` subclass works as its
    own factory). A plain function with 2 or 3 required positional arguments is taken to be the
    reward itself (per-sample or batched) rather than a factory.
    """
    if not isinstance(name, str) or not name or ":" in name or name == "weighted_sum":
        raise ValueError(
            f"reward name must be a non-empty str without ':' (not 'weighted_sum'), got {name!r}"
        )
    if not callable(factory):
        raise TypeError(f"register_reward({name!r}): factory must be callable, got {factory!r}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(
            f"reward {name!r} is already registered; pass overwrite=True to replace it"
        )
    if inspect.isfunction(factory) and _n_positional(factory) in (2, 3):
        fn = factory

        def factory() -> Reward:
            return _from_callable(fn, name)

    _REGISTRY[name] = factory


def reward_names() -> list[str]:
    """The names in the reward registry."""
    return sorted(_REGISTRY)


def rewards_without_reference() -> list[str]:
    """The registry names of ``Reward`` classes that need no reference (for error messages)."""
    return [
        name
        for name, factory in sorted(_REGISTRY.items())
        if isinstance(factory, type) and issubclass(factory, Reward) and not factory.needs_reference
    ]


def _import_callable(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"reward {spec!r}: cannot import module {module_name!r}: {e}") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"reward {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"reward {spec!r} is not callable: {obj!r:.80}")
    return obj


def _from_callable(fn: Callable, name: str | None = None) -> Reward:
    if isinstance(fn, Reward):
        return fn
    n = _n_positional(fn)
    if n == 2:
        return PerSample(fn, name)
    if n == 3 or n is None:
        return BatchedCallable(fn, name)
    raise TypeError(
        f"reward callable {_callable_name(fn)!r} takes {n} required positional arguments; expected "
        "2 (prompt, response) -> float, or 3 (prompts, responses, references) -> array (batched); "
        "wrap a per-sample (prompt, response, reference) function with textenv.rewards.per_sample"
    )


def make_reward_fn(spec: Any) -> Reward:
    """Build a ``Reward`` from any accepted form.

    - a registry name (``"edit_distance"``, ``"repetition"``, ``"length"``, ``"reward_model"``,
      ``"gold"``, or one added with ``register_reward``);
    - ``"package.module:function"``: an importable callable, adapted like a callable;
    - ``{"name": ..., **kwargs}``: a registry name built with kwargs (for ``"module:attr"`` names
      with kwargs, ``attr(**kwargs)`` is called as a factory);
    - ``{"weighted_sum": [{"name": ..., "weight": w, ...}, ...]}``;
    - a ``Reward``, a batched callable ``(prompts, responses, references)``, or a per-sample
      callable ``(prompt, response) -> float``.
    """
    if isinstance(spec, Reward):
        return spec
    if isinstance(spec, str):
        return _from_name(spec, {})
    if isinstance(spec, dict):
        if "weighted_sum" in spec:
            if len(spec) != 1:
                raise ValueError(
                    f"a weighted_sum spec has only the key 'weighted_sum', got {sorted(spec)}"
                )
            return _weighted_sum(spec["weighted_sum"])
        if "name" not in spec:
            raise ValueError(
                f"a reward dict needs 'name' (one of {reward_names()}) or 'weighted_sum', got keys "
                f"{sorted(spec)}"
            )
        kwargs = {k: v for k, v in spec.items() if k != "name"}
        return _from_name(spec["name"], kwargs)
    if callable(spec):
        return _from_callable(spec)
    raise TypeError(
        f"reward_fn must be a name {reward_names()}, a 'module:function' string, a dict, a Reward "
        f"or a callable, got {type(spec).__name__}: {spec!r:.80}"
    )


def _from_name(name: Any, kwargs: dict) -> Reward:
    if callable(name) and not kwargs:  # {"name": my_callable, "weight": w} in a weighted sum
        return make_reward_fn(name)
    if not isinstance(name, str):
        raise TypeError(f"a reward name must be a str, got {name!r}")
    if name in _REGISTRY:
        try:
            built = _REGISTRY[name](**kwargs)
        except TypeError as e:
            raise TypeError(f"reward {name!r}: bad arguments {sorted(kwargs)}: {e}") from e
        reward = make_reward_fn(built) if not isinstance(built, Reward) else built
        if type(reward) in (BatchedCallable, PerSample):
            reward.name = name
        return reward
    if ":" in name:
        obj = _import_callable(name)
        if kwargs:
            return make_reward_fn(obj(**kwargs))
        return _from_callable(obj, name)
    raise ValueError(
        f"unknown reward function {name!r}; known names: {reward_names()}, or 'weighted_sum', or a "
        "'package.module:function' string"
    )


def _weighted_sum(items: Any) -> WeightedSum:
    if not isinstance(items, list) or not items:
        raise ValueError(
            "weighted_sum expects a non-empty list of {'name': ..., 'weight': w, ...} dicts, got "
            f"{items!r:.80}"
        )
    terms = []
    for item in items:
        if not isinstance(item, dict) or "weight" not in item:
            raise ValueError(f"each weighted_sum component needs a 'weight', got {item!r:.80}")
        weight = item["weight"]
        if (
            isinstance(weight, bool)
            or not isinstance(weight, numbers.Real)
            or not math.isfinite(weight)
        ):
            raise ValueError(f"weighted_sum weight must be a finite number, got {weight!r}")
        rest = {k: v for k, v in item.items() if k != "weight"}
        terms.append((make_reward_fn(rest), float(weight)))
    return WeightedSum(terms)
