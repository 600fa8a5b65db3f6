"""The ``reward_model`` reward: a local sequence-classification model, batched, no grad; and
``encode_for_reward_model``, the one input encoding for training and scoring it."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from textenv.rewards.protocol import Reward, check_ended


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
