"""The config reference page (docs/reference/config.md) and the command-line reference
(docs/reference/cli.md), generated from the pydantic models and the argparse parser.

    python -m agents.run.config_reference          # rewrite both pages
    python -m agents.run.config_reference --check  # exit 1 if a page is out of date

Every key is listed with its type, its default (per policy type where the policy type brings its
own), the values it allows and its description (`Field(description=...)`); tests/test_docs_reference.py
checks that every field has a description and that the committed pages are up to date.
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

REPO = Path(__file__).resolve().parents[2]
CONFIG_PAGE = REPO / "docs" / "reference" / "config.md"
CLI_PAGE = REPO / "docs" / "reference" / "cli.md"

# bounds that live in validator functions rather than in pydantic's constraints
VALIDATOR_BOUNDS = {
    "_check_threads": "1 to 4 per CPU of the machine",
    "check_temperature": "1e-24 to 1e38",
    "check_top_p": "(0, 1]",
    "check_top_k": "0 to 2147483647",
}
FIELD_VALUES = {  # keys whose allowed values a field validator checks
    ("RunConfig", "device"): '"auto", "cpu", "cuda", "cuda:N"',
}


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside `annotation` (`Model`, `Model | None`), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        model = _model_of(arg)
        if model is not None:
            return model
    return None


def type_name(annotation: Any) -> str:
    """A short, YAML-minded name of a field's type: int, float, bool, str, list[int], "a or b"."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is Literal:
        kinds = sorted({type(a).__name__ for a in args})
        return " or ".join(kinds)
    if origin in (typing.Union, types.UnionType):
        names = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if origin in (list, tuple):
        return f"list[{type_name(args[0])}]" if args else "list"
    if origin is dict:
        return "mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return getattr(annotation, "__name__", str(annotation)).replace("NoneType", "null")


def allowed_values(model: type[BaseModel], name: str, field: FieldInfo) -> str:
    """The choices (Literal) or bounds (ge/gt/le/lt, known validators) of a field, or ""."""
    if (model.__name__, name) in FIELD_VALUES:
        return FIELD_VALUES[(model.__name__, name)]
    parts: list[str] = []

    def walk(annotation: Any, metadata: list[Any]) -> None:
        origin = typing.get_origin(annotation)
        args = typing.get_args(annotation)
        if origin is typing.Annotated:
            walk(args[0], [*metadata, *annotation.__metadata__])
            return
        if origin is Literal:
            parts.append(", ".join(_value(a) for a in args))
        elif origin in (typing.Union, types.UnionType):
            for arg in args:
                if arg is not type(None):
                    walk(arg, metadata)
            return
        elif origin in (list, tuple) and args:
            walk(args[0], [])
            if parts:
                parts[-1] = "each " + parts[-1]
        for item in metadata:
            bound = _bound(item)
            if bound:
                parts.append(bound)

    walk(field.annotation, list(field.metadata))
    return "; ".join(dict.fromkeys(p for p in parts if p))


def _bound(item: Any) -> str:
    for cls, attr, op in (
        (annotated_types.Ge, "ge", ">="),
        (annotated_types.Gt, "gt", ">"),
        (annotated_types.Le, "le", "<="),
        (annotated_types.Lt, "lt", "<"),
    ):
        if isinstance(item, cls):
            return f"{op} {_number(getattr(item, attr))}"
    if hasattr(item, "metadata"):  # a FieldInfo inside Annotated
        return ", ".join(b for b in map(_bound, item.metadata) if b)
    func = getattr(item, "func", None)
    return VALIDATOR_BOUNDS.get(getattr(func, "__name__", ""), "")


def _number(value: Any) -> str:
    if isinstance(value, int) and value >= 2**16 and (value & (value - 1)) == 0:
        return f"2**{value.bit_length() - 1}"
    if isinstance(value, int) and value >= 2**16 and ((value + 1) & value) == 0:
        return f"2**{value.bit_length()} - 1"
    if isinstance(value, float) and abs(value) >= 1e5:
        return f"{value:g}"
    return repr(value)


def _value(value: Any) -> str:
    """A default or a choice as it is written in YAML."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, float) and (abs(value) < 1e-3 or abs(value) >= 1e5) and value:
        return f"{value:.1e}".replace("e-0", "e-").replace("e+0", "e+")
    if isinstance(value, BaseModel):
        return "(section)"
    return str(value).replace("'", '"').replace("None", "null")


def _default(field: FieldInfo) -> Any:
    if field.default_factory is not None:
        return field.default_factory()  # type: ignore[call-arg]
    return field.default


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def rows(
    model: type[BaseModel], prefix: str, defaults: dict[str, dict[str, Any]] | None = None
) -> Iterator[tuple[str, str, str, str, str]]:
    """(key, type, default, allowed, description) for every field of `model` and of its
    sub-sections; `defaults` maps a column name to {key: default} to show several defaults."""
    for name, field in model.model_fields.items():
        key = prefix + name
        sub = _model_of(field.annotation)
        default = _default(field)
        if defaults:
            each = [_value(values.get(key, default)) for values in defaults.values()]
            shown = each[0] if len(set(each)) == 1 else " / ".join(each)
        else:
            shown = "(section)" if isinstance(default, BaseModel) else _value(default)
        if sub is not None and key != "policy":
            shown = "(section)" if default is not None else "null"
        yield (
            f"`{key}`",
            type_name(field.annotation),
            _cell(shown),
            _cell(allowed_values(model, name, field)),
            _cell(field.description or ""),
        )
        if sub is not None and key != "policy":
            yield from rows(sub, key + ".", defaults)


def table(lines: list[str], body: list[tuple[str, ...]], default_header: str = "default") -> None:
    lines += [
        f"| key | type | {default_header} | allowed | description |",
        "|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    lines.append("")


def section_doc(model: type[BaseModel]) -> str:
    doc = (model.__doc__ or "").strip()
    return " ".join(doc.split())


def config_page() -> str:
    """The Markdown of docs/reference/config.md."""
    from agents.policies import policy_class
    from agents.rlhf.reward_model import RMConfig
    from agents.rlhf.sft import SFTConfig
    from agents.run.config import Config

    mlp, lm = policy_class("mlp"), policy_class("lm")
    per_type = {}
    for kind, cls in (("mlp", mlp), ("lm", lm)):
        flat: dict[str, Any] = {}
        for section, values in cls.config_defaults({}).items():
            flat.update({f"{section}.{k}": v for k, v in values.items()})
        per_type[kind] = flat
    lines = [
        "# Config reference",
        "",
        "<!-- generated by `python -m agents.run.config_reference`; do not edit by hand -->",
        "",
        "A run's config is YAML (`textrlhf train CONFIG`), `--set key=value` overrides "
        "(`--set ppo.n_epochs=10`), or keywords of `agents.PPO`. Unknown keys and values "
        "outside the allowed ones are errors that name the key. A run folder's `config.yaml` "
        "holds every key with the value the run used.",
        "",
        "## `textrlhf train`: the run config",
        "",
        "Keys that a config leaves out of `ppo:` and `env.num_envs` take the policy type's own "
        "defaults: the **default** column shows them as `mlp / lm` where they differ by "
        "`policy.type`. The LM's `ppo.n_steps` is the env's `max_new_tokens` (32 unless "
        "`env.kwargs` says otherwise), and its `ppo.batch_size` a quarter of the rollout's env "
        "columns times n_steps; the MLP's batch size is 256 when it divides the rollout, else "
        "the whole rollout.",
        "",
    ]
    top = [r for r in rows(Config, "") if r[2] != "(section)" and not r[0].startswith("`policy")]
    sections: dict[str, list[tuple[str, ...]]] = {}
    for row in top:
        key = row[0].strip("`")
        head = key.split(".")[0] if "." in key else ""
        sections.setdefault(head, []).append(row)
    for head, body in sections.items():
        if head:
            model = _model_of(Config.model_fields[head].annotation)
            lines += [f"### `{head}`", "", section_doc(model), ""] if model else []
        else:
            lines += ["### Top level", ""]
        if head in ("env", "ppo"):
            body = [
                r
                for r in rows(Config, "", per_type)
                if r[0].strip("`").startswith(head + ".") and r[2] != "(section)"
            ]
            table(lines, body, "default (mlp / lm)")
        else:
            table(lines, body)
        if head == "env":
            lines += _policy_lines(mlp, lm)
    lines += [
        "## `textrlhf sft`: supervised fine-tuning",
        "",
        section_doc(SFTConfig),
        "",
    ]
    table(lines, [r for r in rows(SFTConfig, "") if r[2] != "(section)"])
    lines += ["## `textrlhf rm`: the reward model", "", section_doc(RMConfig), ""]
    table(lines, [r for r in rows(RMConfig, "") if r[2] != "(section)"])
    return "\n".join(lines).rstrip() + "\n"


def _policy_lines(*classes: Any) -> list[str]:
    lines = [
        "### `policy`",
        "",
        "The `policy:` section is validated by the config class of its `type` "
        "([your own policy type](../policies.md) brings its own).",
        "",
    ]
    for cls in classes:
        kind = cls.Config.model_fields["type"].default
        lines += [f"#### `policy.type: {kind}`", "", section_doc(cls.Config), ""]
        table(lines, [r for r in rows(cls.Config, "policy.") if r[2] != "(section)"])
    return lines


def cli_page() -> str:
    """The Markdown of docs/reference/cli.md: every subcommand's usage and options."""
    from agents.cli import build_parser

    parser = build_parser()
    lines = [
        "# Command-line reference",
        "",
        "<!-- generated by `python -m agents.run.config_reference`; do not edit by hand -->",
        "",
        f"`{parser.prog}`: {parser.description}",
        "",
    ]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help for a in sub._choices_actions}
    for name, command in sub.choices.items():
        command.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=100)
        usage = " ".join(command.format_usage().split())
        lines += [f"## `textrlhf {name}`", "", helps.get(name) or "", ""]
        lines += ["```text", usage.replace("usage: ", ""), "```", ""]
        lines += ["| argument | default | description |", "|---|---|---|"]
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            names = ", ".join(action.option_strings) or action.dest
            if action.metavar and action.option_strings:
                meta = action.metavar if isinstance(action.metavar, str) else action.metavar[0]
                names += f" {meta}"
            default = (
                ""
                if action.default in (None, False, argparse.SUPPRESS) or action.option_strings == []
                else f"`{action.default}`"
            )
            text = (action.help or "").replace("%(default)s", str(action.default))
            lines.append(f"| `{_cell(names)}` | {default} | {_cell(text)} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def pages() -> dict[Path, str]:
    """The generated pages: path -> content."""
    return {CONFIG_PAGE: config_page(), CLI_PAGE: cli_page()}


def main(argv: list[str] | None = None) -> int:
    """Write the pages, or with --check report the stale ones (exit 1)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only check, write nothing")
    args = parser.parse_args(argv)
    stale = []
    for path, text in pages().items():
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(path)
        if not args.check:
            path.write_text(text, encoding="utf-8")
    for path in stale:
        verb = "out of date" if args.check else "written"
        print(f"{path.relative_to(REPO)}: {verb}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
