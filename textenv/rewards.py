"""Reward functions: a batched protocol, built-ins, a registry by name, and weighted sums.

Protocol: ``fn(prompts: list[str], responses: list[str], references: list[str | None])`` returns
an array of floats of shape ``(B,)``. Every reward built here is a ``Reward`` object with a
``name``; calling it checks the scores (numeric, finite, right shape) and names the reward function
and the sample on failure; an exception raised by the reward function itself is re-raised with the
reward's name and the sample in the message (same type where it can be rebuilt from a message,
else ``RewardFunctionError``), chained to the original. ``Reward.score(...)`` returns
``(total, components)`` in one evaluation, which the envs use to fill ``info["reward_components"]``.

Truncation: a reward that sets ``wants_ended = True`` also receives ``ended``, one bool per sample
(True: the response ended with EOS; False: it was cut at ``max_new_tokens``), as a keyword of
``compute(prompts, responses, references, ended=...)``. Both envs pass it, to such rewards only (a
weighted sum passes it on to the components that want it), so every other reward and every
per-sample callable keeps the three-argument protocol. A batched callable with a parameter named
``ended`` wants it too. ``ended=None`` (a direct call that does not say) means every response ended.
The ``reward_model`` reward wants it: it appends EOS only to responses that ended, so a cut response
is scored as unfinished (``encode_for_reward_model``).

Built-ins (``make_reward_fn("name")`` or ``{"name": ..., **kwargs}``):

==============  =============================================================  ============
name            score                                                          range
==============  =============================================================  ============
edit_distance   rapidfuzz normalized Levenshtein similarity to the reference    [0, 1]
repetition      distinct-n with a minimum length: unique character n-grams /    [0, 1]
                ``max(total n-grams, min_length - n + 1)`` (``n=3``,
                ``min_length=16``); 0 for texts shorter than n
length          ``len(response) / scale`` (``scale=32``); with ``target=t``:     [0, ...)
                ``-abs(len(response) - t) / scale``                             (..., 0]
reward_model    scalar logit of a local ``AutoModelForSequenceClassification``  real
                (kwarg ``path``), one batched forward pass, no grad
gold            the gold rule of ``textenv.gold`` (string-task prompts only):   [-0.5, 1.5]
                fit to the word's length + a vowel term
exact_answer    1.0 when the last integer of the response, outside tool calls   {0, 1}
                and their results (``<calc>...</calc>=...``), equals the
                reference (an integer), else 0.0
==============  =============================================================  ============
"""

from __future__ import annotations

import importlib
import inspect
import math
import numbers
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from rapidfuzz.distance import Levenshtein

from textenv.gold import gold_score
from textenv.tools import TOOL_SPAN

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


class EditDistance(Reward):
    """Normalized Levenshtein similarity to the reference (rapidfuzz), in [0, 1]; 1 = exact."""

    name = "edit_distance"
    needs_reference = True

    def compute(self, prompts, responses, references):
        for i, ref in enumerate(references):
            if ref is None:
                raise _named(
                    ValueError(
                        f"reward function 'edit_distance' needs a reference, but "
                        f"{_sample(prompts, responses, i)} has reference None; use prompts with "
                        "references (e.g. the 'reverse' task) or a reward that needs none "
                        f"{rewards_without_reference()}"
                    )
                )
        sim = Levenshtein.normalized_similarity
        return np.fromiter(
            (sim(r, ref) for r, ref in zip(responses, references)), np.float64, len(responses)
        )


class Repetition(Reward):
    """Distinct-n of the response with a minimum length, in [0, 1] (1 = long and no repeats).

    ``unique n-grams / max(total n-grams, min_length - n + 1)`` over characters. Plain distinct-n
    (``min_length=1``) gives 1.0 to any text of exactly n characters, so a policy trained on it
    learns to stop early; the minimum length makes short texts score proportionally less.
    """

    name = "repetition"

    def __init__(self, n: int = 3, min_length: int = 16) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"repetition: n must be an int >= 1, got {n!r}")
        if isinstance(min_length, bool) or not isinstance(min_length, int) or min_length < n:
            raise ValueError(f"repetition: min_length must be an int >= n={n}, got {min_length!r}")
        self.n, self.min_ngrams = n, min_length - n + 1

    def compute(self, prompts, responses, references):
        out = np.zeros(len(responses))
        n = self.n
        for i, r in enumerate(responses):
            total = len(r) - n + 1
            if total > 0:
                out[i] = len({r[j : j + n] for j in range(total)}) / max(total, self.min_ngrams)
        return out


class Length(Reward):
    """``len(response) / scale``, or ``-abs(len(response) - target) / scale`` with a target."""

    name = "length"

    def __init__(self, target: int | None = None, scale: float = 32.0) -> None:
        if target is not None and (
            isinstance(target, bool) or not isinstance(target, int) or target < 0
        ):
            raise ValueError(f"length: target must be None or an int >= 0, got {target!r}")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
            raise ValueError(f"length: scale must be a number > 0, got {scale!r}")
        self.target, self.scale = target, float(scale)

    def compute(self, prompts, responses, references):
        lengths = np.fromiter((len(r) for r in responses), np.float64, len(responses))
        if self.target is None:
            return lengths / self.scale
        return -np.abs(lengths - self.target) / self.scale


def encode_for_reward_model(
    tokenizer: Any,
    prompts: Sequence[str],
    responses: Sequence[str],
    ended: Sequence[bool] | None = None,
) -> dict:
    """THE reward-model input encoding, for training and scoring alike.

    Text ``prompt + response`` tokenized without special tokens, EOS appended to the responses
    that ended (``ended[i]``; None: all), right-padded with the pad id. A response cut at the
    length limit (``ended[i] = False``) gets no EOS, so the model sees it as unfinished. Returns
    ``{"input_ids": LongTensor (B, T), "attention_mask": LongTensor (B, T)}``; the score is read
    at the last real token (the EOS, or a cut response's last token), where a HF
    sequence-classification model with ``pad_token_id`` set pools.
    """
    import torch

    if len(prompts) != len(responses) or not prompts:
        raise ValueError(
            f"need as many prompts as responses, at least one: got {len(prompts)} and {len(responses)}"
        )
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    if eos is None or pad is None:
        raise ValueError(
            f"reward-model tokenizer {type(tokenizer).__name__} needs eos_token_id and "
            f"pad_token_id, got eos={eos}, pad={pad}"
        )
    ended = check_ended(ended, len(prompts))
    texts = [p + r for p, r in zip(prompts, responses)]
    tokenized = tokenizer(texts, add_special_tokens=False)["input_ids"]
    ids = [list(x) + [eos] * e for x, e in zip(tokenized, ended)]  # EOS only where it ended
    if min(len(x) for x in ids) == 0:
        raise ValueError("reward-model input is empty: an empty prompt + a cut empty response")
    width = max(len(x) for x in ids)
    input_ids = np.full((len(ids), width), pad, dtype=np.int64)  # (B, T)
    attention_mask = np.zeros((len(ids), width), dtype=np.int64)  # (B, T)
    for i, x in enumerate(ids):
        input_ids[i, : len(x)] = x
        attention_mask[i, : len(x)] = 1
    return {
        "input_ids": torch.from_numpy(input_ids),
        "attention_mask": torch.from_numpy(attention_mask),
    }


class RewardModel(Reward):
    """Scalar logit of a local ``AutoModelForSequenceClassification`` folder (``num_labels=1``).

    Loads ``path`` with ``use_safetensors=True`` and its tokenizer, in eval mode; scores a batch
    with one forward pass under ``torch.no_grad`` on ``encode_for_reward_model`` inputs. It wants
    ``ended``: a response cut at the length limit is encoded without EOS (``eos_on_cut=True``
    appends EOS to every response, which scores a cut response as if it had ended).
    """

    name = "reward_model"
    wants_ended = True

    def __init__(self, path: str, device: str = "cpu", eos_on_cut: bool = False) -> None:
        import os

        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if not isinstance(path, (str, os.PathLike)) or not os.path.isdir(path):
            raise ValueError(
                f"reward_model: path must be a local model folder (config.json + "
                f"model.safetensors + tokenizer files), got {path!r}"
            )
        if not isinstance(eos_on_cut, bool):
            raise TypeError(f"reward_model: eos_on_cut must be a bool, got {eos_on_cut!r}")
        # the kinds the reward is run and tested on; torch knows more (meta, mps, ...), which
        # fail later, while scoring, with a traceback
        if not isinstance(device, str) or not re.fullmatch(r"cpu|cuda(:[0-9]+)?", device):
            raise ValueError(
                f"reward_model {os.fspath(path)!r}: device must be 'cpu', 'cuda' or 'cuda:N', got "
                f"{device!r}"
            )
        if device != "cpu" and not torch.cuda.is_available():
            raise ValueError(
                f"reward_model {os.fspath(path)!r}: device {device!r} needs CUDA, which this "
                "machine's torch does not have; use 'cpu'"
            )
        self.path, self.device = os.fspath(path), torch.device(device)
        self.eos_on_cut = eos_on_cut
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            self.path, use_safetensors=True
        )
        if self.model.config.num_labels != 1:
            raise ValueError(
                f"reward_model {self.path!r}: num_labels must be 1 (a scalar score), "
                f"got {self.model.config.num_labels}"
            )
        if self.model.config.pad_token_id is None:
            raise ValueError(f"reward_model {self.path!r}: config.pad_token_id must be set")
        self.model.to(self.device).eval()

    def compute(self, prompts, responses, references, ended=None):
        import torch

        batch = encode_for_reward_model(
            self.tokenizer, prompts, responses, None if self.eos_on_cut else ended
        )
        with torch.no_grad():
            logits = self.model(**{k: v.to(self.device) for k, v in batch.items()}).logits  # (B, 1)
        return logits[:, 0].float().cpu().numpy()


class GoldReward(Reward):
    """The gold rule (``textenv.gold.gold_score``) as a batched reward, registered as ``gold``.

    Only for string-task prompts ``"<op>: <word>\\n"``; as a weight-0 component of a weighted sum
    it is logged in ``info["reward_components"]["gold"]`` without changing the reward.
    """

    name = "gold"

    def compute(self, prompts, responses, references):
        return np.array([gold_score(p, r) for p, r in zip(prompts, responses)], dtype=np.float64)


_INTEGER = re.compile(r"-?[0-9]+")  # ASCII digits: `\d` also reads e.g. Arabic-Indic ones


def last_integer(response: str) -> int | None:
    """The last integer of ``response`` outside tool calls and their results, or None."""
    numbers = _INTEGER.findall(TOOL_SPAN.sub(" ", response))
    return int(numbers[-1]) if numbers else None


class ExactAnswer(Reward):
    """1.0 when the last integer of the response (tool calls and results left out) equals the
    reference, else 0.0 (the ``calc`` task; ``info["tool_calls"]`` lists the calls)."""

    name = "exact_answer"
    needs_reference = True

    def compute(self, prompts, responses, references):
        scores = np.zeros(len(responses))
        for i, (response, ref) in enumerate(zip(responses, references)):
            if ref is None or not _INTEGER.fullmatch(ref.strip()):
                raise _named(
                    ValueError(
                        f"reward function 'exact_answer' needs an integer reference, but "
                        f"{_sample(prompts, responses, i)} has reference {ref!r}; use the 'calc' "
                        "task or prompts with integer references"
                    )
                )
            scores[i] = float(last_integer(response) == int(ref))
        return scores


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
