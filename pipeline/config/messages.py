"""Config errors as a user reads them: one line per invalid key, the closest known key for a typo."""

from __future__ import annotations

import difflib

from pydantic import BaseModel, ValidationError

from pipeline.config.schema import Config


def format_validation_error(error: ValidationError, where: str, root: type[BaseModel] | None = None) -> str:
    """One line per invalid key; an unknown key gets the closest known keys of ``root`` (default: :class:`Config`)."""
    lines = [f"invalid config {where}:"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"])
        if item["type"] == "extra_forbidden":
            lines.append(f"  - unknown key {key!r}{_suggest_key(item, root or Config)}")
        elif item["type"] == "value_error" and isinstance(item.get("input"), dict):
            # a check across keys: the message names them; the whole section as input would only hide it
            message = item["msg"].removeprefix("Value error, ")
            lines.append(f"  - {key}: {message}" if key else f"  - {message}")
        else:
            lines.append(f"  - {key}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


def _suggest_key(item: dict, root: type[BaseModel]) -> str:
    model = _model_at(root, item["loc"][:-1])
    if model is None:
        return ""
    close = difflib.get_close_matches(str(item["loc"][-1]), list(model.model_fields), n=3)
    return (
        f"; did you mean {' or '.join(repr(c) for c in close)}?"
        if close
        else f"; known keys: {', '.join(model.model_fields)}"
    )


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        model = field.annotation
    return model
