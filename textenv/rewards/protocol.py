"""The reward protocol: ``Reward`` (``compute``, and ``score``, which checks the scores), the
checks and errors that name the reward and the sample, the adapters of plain callables
(``BatchedCallable``, ``PerSample``) and ``WeightedSum``. The protocol: ``textenv.rewards``."""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

_NAMED = "_textenv_names_reward"  # set on errors whose message already names reward and sample


class RewardFunctionError(RuntimeError):
    """A reward function raised an exception whose type cannot carry the added context."""


def _named(error: Exception) -> Exception:
    """Mark ``error`` as already naming the reward and the sample (``Reward.score`` keeps it)."""
    setattr(error, _NAMED, True)
    return error


def _with_context(error: Exception, name: str, where: str) -> Exception:
    """``error`` rebuilt with the reward's name and the sample in its message, for ``raise ... from
    error``: the same type where ``type(error)(message)`` gives that message, else
    ``RewardFunctionError``."""
    message = f"reward function {name!r} raised {type(error).__name__} on {where}: {error}"
    try:
        rebuilt = type(error)(message)
    except Exception:  # a constructor that needs other arguments, e.g. UnicodeDecodeError
        rebuilt = None
    if rebuilt is None or str(rebuilt) != message:  # e.g. KeyError quotes its message
        rebuilt = RewardFunctionError(message)
    return _named(rebuilt)


def _sample(prompts: Sequence[str], responses: Sequence[str], i: int) -> str:
    return f"sample {i} (prompt={prompts[i]!r}, response={responses[i]!r})"


def _batch(prompts: Sequence[str], responses: Sequence[str], shown: int = 3) -> str:
    """The samples of a batch, for an error that cannot be pinned to one of them."""
    if len(prompts) == 1:
        return _sample(prompts, responses, 0)
    samples = "; ".join(_sample(prompts, responses, i) for i in range(min(shown, len(prompts))))
    more = "; ..." if len(prompts) > shown else ""
    return f"a batch of {len(prompts)} samples: {samples}{more}"


def check_scores(
    raw: Any, name: str, prompts: Sequence[str], responses: Sequence[str]
) -> np.ndarray:
    """Convert ``raw`` to a float64 array of shape (B,); raise naming ``name`` and the sample."""
    if hasattr(raw, "detach"):  # a torch tensor
        raw = raw.detach().cpu().numpy()
    try:
        arr = np.asarray(raw) if not isinstance(raw, np.ndarray) else raw
    except ValueError as e:  # e.g. a ragged list
        raise ValueError(f"reward function {name!r} returned {raw!r:.80}, not scores: {e}") from e
    if arr.dtype.kind not in "biuf":
        bad = next((i for i, v in enumerate(np.ravel(arr)) if not isinstance(v, numbers.Real)), 0)
        where = _sample(prompts, responses, bad) if bad < len(prompts) else "the batch"
        value = np.ravel(arr)[bad] if arr.size else raw
        raise TypeError(
            f"reward function {name!r} returned a non-numeric score {value!r:.80} "
            f"(dtype {arr.dtype}) for {where}; scores must be real numbers"
        )
    arr = arr.astype(np.float64, copy=False)
    if arr.shape != (len(prompts),):
        raise ValueError(
            f"reward function {name!r} returned scores of shape {arr.shape}, expected "
            f"({len(prompts)},): one score per sample"
        )
    finite = np.isfinite(arr)
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        raise ValueError(
            f"reward function {name!r} returned a non-finite score {arr[i]} for "
            f"{_sample(prompts, responses, i)}; scores must be finite"
        )
    return arr


def check_ended(ended: Any, n: int) -> list[bool]:
    """``ended`` as a list of ``n`` bools (None: all True); ValueError/TypeError otherwise."""
    if ended is None:
        return [True] * n
    values = list(np.asarray(ended).reshape(-1)) if not isinstance(ended, list) else ended
    if len(values) != n:
        raise ValueError(f"ended must hold one bool per sample ({n}), got {len(values)}")
    out = []
    for v in values:
        if not isinstance(v, (bool, np.bool_)):
            raise TypeError(f"ended must hold bools (True: the response ended with EOS), got {v!r}")
        out.append(bool(v))
    return out


class Reward:
    """A named batched reward function. Subclasses implement ``compute``."""

    name: str = "reward"
    needs_reference: bool = False  # True: the envs reject prompt sets without references early
    wants_ended: bool = False  # True: compute() also gets ended= (which responses ended with EOS)

    def compute(
        self, prompts: list[str], responses: list[str], references: list[str | None]
    ) -> Any:
        raise NotImplementedError

    def score(
        self,
        prompts: list[str],
        responses: list[str],
        references: list[str | None],
        ended: Sequence[bool] | None = None,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Checked scores and the per-component scores, from one evaluation.

        ``ended`` (one bool per sample, True = ended with EOS) reaches ``compute`` only when
        ``wants_ended``; None means every response ended."""
        kwargs = {"ended": check_ended(ended, len(prompts))} if self.wants_ended else {}
        try:
            raw = self.compute(prompts, responses, references, **kwargs)
        except Exception as e:
            if getattr(e, _NAMED, False):
                raise
            raise _with_context(e, self.name, _batch(prompts, responses)) from e
        total = check_scores(raw, self.name, prompts, responses)
        return total, {self.name: total}

    def __call__(
        self,
        prompts: list[str],
        responses: list[str],
        references: list[str | None] | None = None,
        ended: Sequence[bool] | None = None,
    ) -> np.ndarray:
        if references is None:
            references = [None] * len(prompts)
        kwargs = {"ended": ended} if self.wants_ended else {}
        return self.score(list(prompts), list(responses), list(references), **kwargs)[0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


RewardFunction = Reward  # the protocol's name in docs/ARCHITECTURE.md


class BatchedCallable(Reward):
    """Adapts a user callable that follows the batched protocol."""

    def __init__(self, fn: Callable, name: str | None = None) -> None:
        self.fn, self.name = fn, name or _callable_name(fn)
        self.wants_ended = _has_keyword(fn, "ended")

    def compute(self, prompts, responses, references, **ended):
        return self.fn(prompts, responses, references, **ended)


class PerSample(Reward):
    """Adapts a per-sample callable ``(prompt, response) -> float`` (or with ``reference``)."""

    def __init__(self, fn: Callable, name: str | None = None, with_reference: bool = False) -> None:
        self.fn, self.name, self.with_reference = fn, name or _callable_name(fn), with_reference

    def compute(self, prompts, responses, references):
        out = np.empty(len(prompts))
        for i, (p, r, ref) in enumerate(zip(prompts, responses, references)):
            try:
                value = self.fn(p, r, ref) if self.with_reference else self.fn(p, r)
            except Exception as e:
                raise _with_context(e, self.name, _sample(prompts, responses, i)) from e
            if hasattr(value, "detach"):  # a torch tensor, e.g. torch.tensor(0.5)
                value = value.detach().cpu().numpy()
            if hasattr(value, "item") and getattr(value, "size", 1) == 1:
                value = value.item()
            if not isinstance(value, numbers.Real):
                raise _named(
                    TypeError(
                        f"reward function {self.name!r} returned a non-numeric score "
                        f"{value!r:.80} ({type(value).__name__}) for "
                        f"{_sample(prompts, responses, i)}"
                    )
                )
            if not math.isfinite(value):
                raise _named(
                    ValueError(
                        f"reward function {self.name!r} returned a non-finite score {value} for "
                        f"{_sample(prompts, responses, i)}; scores must be finite"
                    )
                )
            out[i] = value
        return out


def per_sample(fn: Callable) -> PerSample:
    """Mark a per-sample callable ``(prompt, response, reference) -> float`` (3 arguments)."""
    return PerSample(fn, with_reference=True)


class WeightedSum(Reward):
    """``sum_i w_i * r_i``; every component (weight 0 included) is reported by ``score``."""

    name = "weighted_sum"

    def __init__(self, terms: Sequence[tuple[Reward, float]]) -> None:
        if not terms:
            raise ValueError("weighted_sum needs at least one component")
        self.terms, self.names = list(terms), []
        for reward, _ in self.terms:
            name, k = reward.name, 2
            while name in self.names:  # two components with one name: "length", "length_2"
                name, k = f"{reward.name}_{k}", k + 1
            self.names.append(name)
        self.needs_reference = any(reward.needs_reference for reward, _ in self.terms)
        self.wants_ended = any(reward.wants_ended for reward, _ in self.terms)

    def score(self, prompts, responses, references, ended=None):
        total, parts = np.zeros(len(prompts)), {}
        for name, (reward, weight) in zip(self.names, self.terms):
            kwargs = {"ended": ended} if reward.wants_ended else {}
            value, _ = reward.score(prompts, responses, references, **kwargs)
            parts[name] = value
            total += weight * value
        return total, parts

    def __repr__(self) -> str:
        terms = ", ".join(f"{w}*{n}" for n, (_, w) in zip(self.names, self.terms))
        return f"WeightedSum({terms})"


def _callable_name(fn: Callable) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if name is None:
        name = type(fn).__name__
    module = getattr(fn, "__module__", None)
    return f"{module}:{name}" if module and module not in ("__main__", "builtins") else name


def _has_keyword(fn: Callable, name: str) -> bool:
    """Whether ``fn`` has a parameter ``name`` that can be passed by keyword."""
    try:
        param = inspect.signature(fn).parameters.get(name)
    except (TypeError, ValueError):
        return False
    return param is not None and param.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
    )


def _n_positional(fn: Callable) -> int | None:
    """Number of positional parameters ``fn`` accepts (None if unknown or variadic)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if any(p.kind == inspect.Parameter.VAR_POSITIONAL for p in params):
        return None
    return sum(p.kind in kinds and p.default is inspect.Parameter.empty for p in params)
