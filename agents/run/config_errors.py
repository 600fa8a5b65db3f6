"""pydantic's validation errors as config messages: one per bad key, naming the key, the bad value
and what is allowed ("did you mean" for an unknown key)."""

from __future__ import annotations

import difflib

from pydantic import BaseModel, ValidationError


def suggest(key: str, allowed: list[str]) -> str:
    """'; did you mean 'x'?' for the closest allowed key, or '' if nothing is close."""
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _section_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The model class that holds the last key of `loc` (None past a dict or a list)."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def format_errors(err: ValidationError, model: type[BaseModel], prefix: str = "") -> str:
    """pydantic's errors as one message per bad key: the key, the bad value, what is allowed."""
    messages = []
    for e in err.errors():
        loc = e["loc"]
        key = prefix + ".".join(str(p) for p in loc)
        if e["type"] == "extra_forbidden":
            section = _section_at(model, loc)
            allowed = sorted(section.model_fields) if section is not None else []
            where = (prefix + ".".join(str(p) for p in loc[:-1])).rstrip(".") or "the top level"
            messages.append(
                f"unknown config key {key!r}{suggest(str(loc[-1]), allowed)} "
                f"(allowed under {where}: {allowed})"
            )
        elif e["type"] == "literal_error":
            expected = e["ctx"]["expected"]
            messages.append(
                f"{key} must be one of [{expected.replace(' or ', ', ')}], got {e['input']!r}"
            )
        elif not loc:  # a check across keys (model validator)
            messages.append(e["msg"].removeprefix("Value error, "))
        else:
            got = e["input"]
            messages.append(
                f"config key {key!r} = {got!r}: {e['msg'].removeprefix('Value error, ')}"
            )
    return "; ".join(messages)
