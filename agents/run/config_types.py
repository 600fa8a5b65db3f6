"""The value types of the config models: numbers that refuse YAML's booleans, the bounds of every
number that sizes something, the torch thread count, and `Section`, the base of every config
section (unknown keys and non-finite numbers are errors). The RLHF stages' configs use them too.
"""

from __future__ import annotations

import os
import typing
from typing import Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field


def _not_bool(value: Any) -> Any:
    """YAML's true/false are not numbers (pydantic would read them as 1 and 0)."""
    if isinstance(value, bool):
        raise ValueError(f"must be a number, got {value!r}")
    return value


Number = BeforeValidator(_not_bool)
Int = typing.Annotated[int, Number]
PositiveInt = typing.Annotated[int, Number, Field(gt=0)]
PositiveFloat = typing.Annotated[float, Number, Field(gt=0)]
NonNegInt = typing.Annotated[int, Number, Field(ge=0)]
NonNegFloat = typing.Annotated[float, Number, Field(ge=0)]
Fraction = typing.Annotated[float, Number, Field(ge=0, le=1)]
# numpy's global seed takes 0 <= seed < 2**32; runs add offsets (eval: 10_000 + seed, env rows)
Seed = typing.Annotated[int, Number, Field(ge=0, le=2**31 - 1)]

# Upper bounds of the numbers that size something (arrays, threads, loops over steps). Below them
# the run's own checks give the precise error (the rollout buffer against the machine's memory,
# prompt + response against the model's context); the bounds keep every size far from int64 and
# float overflow, which would otherwise end in an OverflowError, numpy's "maximum allowed
# dimension exceeded" or a segfault, naming no config key.
MAX_STEPS = 2**53  # step and episode counters: exact in metrics.csv's floats and JSON readers
MAX_ROWS = 2**20  # env rows, rollout steps, batch sizes, examples: two multiplied stay < 2**40
MAX_EPISODES = 2**24  # an evaluation keeps every episode's return (and a text run's sample)
MAX_TOKENS = 2**20  # prompt and response lengths: longer than any model's context
MAX_WIDTH = 2**16  # layer widths: one 2**16 x 2**16 float32 matrix is already 16 GiB
Steps = typing.Annotated[int, Number, Field(gt=0, le=MAX_STEPS)]
NonNegSteps = typing.Annotated[int, Number, Field(ge=0, le=MAX_STEPS)]
Rows = typing.Annotated[int, Number, Field(gt=0, le=MAX_ROWS)]
Tokens = typing.Annotated[int, Number, Field(gt=0, le=MAX_TOKENS)]
Width = typing.Annotated[int, Number, Field(gt=0, le=MAX_WIDTH)]


def max_torch_threads() -> int:
    """The most torch threads a config may ask for: 4 per CPU of this machine. More than one per
    core only slows torch down (they compete for the same cores), and a huge count makes torch
    allocate per-thread state until it crashes (1,000,000 segfaults)."""
    return 4 * (os.cpu_count() or 1)


def _check_threads(value: int) -> int:
    if not 1 <= value <= max_torch_threads():
        raise ValueError(
            f"must be in [1, {max_torch_threads()}] (4 per CPU of this machine, which has "
            f"{os.cpu_count()}); more threads than cores only slow torch down"
        )
    return value


Threads = typing.Annotated[int, Number, AfterValidator(_check_threads)]


class Section(BaseModel):
    """A config section: unknown keys and non-finite numbers are errors."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
