"""Reading YAML safely: `ConfigLoader` (the loader for every YAML file the project reads: no
duplicate keys, alias bombs, recursive aliases, deep nesting or lone surrogates), `read_yaml` (a
config file, bounded in size) and `apply_overrides` (`--set key=value`). Every error is a
ValueError naming the file or the override, and the line."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import yaml

from agents.run.jsonio import MAX_NESTING, is_unicode_text


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply `a.b.c=value` strings in place (values are parsed as YAML: 10, 1e-3, true, [64])."""
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value, e.g. ppo.n_epochs=10")
        key, raw = item.split("=", 1)
        node = data
        *parents, leaf = key.strip().split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"override {item!r}: {part!r} is not a config section")
            node = child
        node[leaf] = parse_yaml(raw, f"override {item!r}")
    return data


# A config is a few KB; a run folder's config.yaml holds at most a prompt list inline. Run folders
# are shared (`textrlhf eval RUN` reads a file someone else wrote) and YAML aliases let a tiny
# file stand for a huge structure (1.6 KB of anchors -> 10**9 values for every reader that walks
# it), so the file size and the number of values after alias expansion are both bounded.
MAX_YAML_BYTES = 4 * 2**20
MAX_YAML_VALUES = 1_000_000
# MAX_NESTING (agents.run.jsonio): deeper nesting is refused; a config needs ~5 levels, and every
# reader of the data (validation, --set, the checkpoint's copy, the writers) recurses once per level
_MERGE_TAG = "tag:yaml.org,2002:merge"


def _yaml_error(problem: str, node: yaml.Node) -> yaml.constructor.ConstructorError:
    return yaml.constructor.ConstructorError(None, None, problem, node.start_mark)


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a document whose values, with every alias expanded, number more than
    MAX_YAML_VALUES or nest deeper than MAX_NESTING, or that holds an alias to its own ancestor.
    Counted without expanding: each node once (an alias shares its anchor's node), iteratively."""
    counted: dict[int, tuple[int, int]] = {}  # id(node) -> (values, depth) with aliases expanded
    open_nodes: set[int] = set()  # the ancestors of the node being visited
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        children = (
            [n for pair in node.value for n in pair]
            if isinstance(node, yaml.MappingNode)
            else node.value
            if isinstance(node, yaml.SequenceNode)
            else []
        )
        if finished:
            values = 1 + sum(counted[id(c)][0] for c in children)
            depth = 1 + max((counted[id(c)][1] for c in children), default=0)
            if values > MAX_YAML_VALUES:
                raise _yaml_error(
                    f"its aliases expand to more than {MAX_YAML_VALUES:,} values (an alias "
                    "bomb?); write the values out, or use fewer anchors",
                    node,
                )
            if depth > MAX_NESTING:
                raise _yaml_error(f"values nested more than {MAX_NESTING} levels deep", node)
            open_nodes.discard(id(node))
            counted[id(node)] = values, depth
        elif id(node) in open_nodes:
            raise _yaml_error("a recursive alias (a value that contains itself)", node)
        elif id(node) not in counted:
            open_nodes.add(id(node))
            stack.append((node, True))
            stack.extend((c, False) for c in children)


class ConfigLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` for every YAML file the project reads, refusing what plain YAML would
    accept silently or slowly: a duplicate key at any depth (YAML keeps the last one, so a
    second `ppo:` section would reset the first), alias bombs and recursive aliases, nesting
    deeper than MAX_NESTING, and strings with a lone surrogate (not Unicode text: they fail
    later, when written to a file or a tokenizer)."""

    def construct_document(self, node: yaml.Node) -> Any:
        _check_expansion(node)
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:  # before the merge keys (<<) are flattened into it
                if key_node.tag == _MERGE_TAG:
                    continue  # an explicit key overrides a merged one: YAML's merge semantics
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, typing.Hashable):
                    continue  # the base class reports an unhashable key
                if key in first:
                    raise _yaml_error(
                        f"duplicate key {key!r}: first at line {first[key].start_mark.line + 1}, "
                        f"again at line {key_node.start_mark.line + 1} (YAML would silently keep "
                        "the last one); keep one",
                        key_node,
                    )
                first[key] = key_node
        return super().construct_mapping(node, deep=deep)

    def construct_scalar(self, node: yaml.ScalarNode) -> Any:
        value = super().construct_scalar(node)
        if isinstance(value, str) and not is_unicode_text(value):
            raise _yaml_error(
                f"the string {value!r:.60} holds a lone surrogate: not Unicode text", node
            )
        return value


def parse_yaml(text: str, where: str) -> Any:
    """YAML through `ConfigLoader`; a syntax error, a duplicate key, an alias bomb or too deep a
    nesting is a ValueError naming `where` (a file or an override) and the line."""
    try:
        return yaml.load(text, Loader=ConfigLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as err:
        mark, problem = getattr(err, "problem_mark", None), getattr(err, "problem", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        reason = " ".join(str(problem or err).split())
        raise ValueError(f"{where} is not valid YAML ({at}{reason})") from None
    except RecursionError:  # the YAML composer recurses once per level, before any check
        raise ValueError(
            f"{where} is not a usable config: values nested more than {MAX_NESTING} levels deep"
        ) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML config file. Refused, naming the file: a missing file, one larger
    than MAX_YAML_BYTES, one that is not UTF-8 or not valid YAML (see `ConfigLoader`), and an
    empty one (blanks and comments only: it would silently mean every default, i.e. CartPole)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    with path.open("rb") as f:
        raw = f.read(MAX_YAML_BYTES + 1)  # never more, whatever the file claims to be
    if len(raw) > MAX_YAML_BYTES:
        raise ValueError(
            f"config file {str(path)!r} is larger than {MAX_YAML_BYTES // 2**20} MB; a config is "
            "a few KB (put long prompt lists in a .jsonl file and name it in env.kwargs.prompts)"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"config file {str(path)!r} is not UTF-8 text ({err})") from None
    data = parse_yaml(text, f"config file {str(path)!r}")
    if data is None:
        raise ValueError(
            f"config file {str(path)!r} is empty (only blanks or comments); a config names at "
            "least its env, e.g. configs/cartpole.yaml (write {} to mean every default)"
        )
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(path)!r} must hold a mapping at the top level")
    return data
