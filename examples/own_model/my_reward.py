"""A reward module of your own, for examples/own_model/config.yaml (`reward_fn: my_reward:score`).

The env imports it by name (`module:function`), so the module must be importable: installed in
your environment, or on PYTHONPATH (`PYTHONPATH=examples/own_model textrlhf train ...`).
"""

from __future__ import annotations

from difflib import SequenceMatcher

import numpy as np


def score(prompts: list[str], responses: list[str], references: list[str | None]) -> np.ndarray:
    """Batched: 1.0 for the exact reference, else the similarity ratio in [0, 1) scaled by 0.8,
    so that an exact answer is worth clearly more than a near miss."""
    out = []
    for response, reference in zip(responses, references):
        answer = response.strip()
        if reference is None:
            out.append(0.0)
        elif answer == reference:
            out.append(1.0)
        else:
            out.append(0.8 * SequenceMatcher(None, answer, reference).ratio())
    return np.asarray(out, dtype=np.float64)
