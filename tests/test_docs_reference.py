"""The generated reference pages: every config key carries a description, and the committed
docs/reference/config.md and cli.md are what `python -m agents.run.config_reference` writes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import BaseModel

from agents.policies import policy_class
from agents.rlhf.reward_model import RMConfig
from agents.rlhf.sft import SFTConfig
from agents.run import config_reference
from agents.run.config import Config


def fields(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, object]]:
    """(dotted key, FieldInfo) of every field of `model` and of its sub-sections."""
    for name, field in model.model_fields.items():
        yield prefix + name, field
        sub = config_reference._model_of(field.annotation)
        if sub is not None and name != "policy":
            yield from fields(sub, f"{prefix}{name}.")


MODELS = {
    "run config": Config,
    "policy mlp": policy_class("mlp").Config,
    "policy lm": policy_class("lm").Config,
    "sft": SFTConfig,
    "rm": RMConfig,
}


@pytest.mark.parametrize("which", MODELS)
def test_every_config_key_has_a_one_line_description(which):
    missing = [key for key, field in fields(MODELS[which]) if not field.description]
    assert not missing, f"{which}: keys without Field(description=...): {missing}"
    for key, field in fields(MODELS[which]):
        assert "\n" not in field.description, key
        assert field.description.endswith("."), f"{which}: {key}: a sentence ends with '.'"


def test_the_config_reference_lists_every_key_with_its_per_type_defaults():
    page = config_reference.config_page()
    for which, model in MODELS.items():
        prefix = "policy." if which.startswith("policy") else ""
        for key, field in fields(model, prefix):
            if field.default_factory is not None and config_reference._model_of(field.annotation):
                continue  # a section: its keys are listed
            assert f"`{key}`" in page, f"{which}: {key} is not on the page"
    # the MLP's and the LM's own ppo defaults, side by side
    assert "| `ppo.n_epochs` | int | 20 / 2 |" in page
    assert "| `env.num_envs` | int | 8 / 128 |" in page
    assert '"token", "sequence", "token_sum"' in page  # a Literal's choices


def test_the_cli_reference_lists_every_subcommand_and_option():
    from agents.cli import build_parser

    page = config_reference.cli_page()
    for command in ("train", "eval", "compare", "sft", "rm", "export", "report"):
        assert f"## `textrlhf {command}`" in page
    assert "--nproc N" in page and "--resume RUN_DIR" in page
    assert build_parser().parse_args(["train", "x.yaml", "--nproc", "2"]).nproc == 2


def test_the_committed_reference_pages_are_up_to_date():
    for path, text in config_reference.pages().items():
        assert path.read_text(encoding="utf-8") == text, (
            f"{path.name} is out of date: run `python -m agents.run.config_reference`"
        )
