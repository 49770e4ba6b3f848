"""Which settings enter a run's hash, read from the schema's fields (their ``json_schema_extra``).

A field marked ``NOT_HASHED`` never enters it; ``WHEN_SET`` enters only when it differs from the field's
default; ``WHEN_GIVEN`` only when it is non-empty; any other field always does. So a new setting changes the
hash of the runs that use it and of no run made before it existed, without a second table of defaults.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from pipeline.config.schema import Config, TrainConfig


def hash_rule(model: type[BaseModel], name: str) -> str:
    """How field ``name`` of ``model`` enters a run's hash: ``always``, ``never``, ``when_set`` or ``when_given``."""
    extra = model.model_fields[name].json_schema_extra
    return extra.get("hashed", "always") if isinstance(extra, dict) else "always"


def hashed_settings(settings: BaseModel) -> dict[str, Any]:
    """``settings`` dumped with every field its hash rule leaves out removed."""
    model = type(settings)
    dump = settings.model_dump()
    for name, field in model.model_fields.items():
        rule = hash_rule(model, name)
        if rule == "never":
            dump.pop(name)
        elif rule == "when_set" and dump[name] == field.get_default(call_default_factory=True):
            dump.pop(name)
        elif rule == "when_given" and not dump[name]:
            dump.pop(name)
    return dump


def settings_dump(cfg: TrainConfig) -> dict:
    """The training settings that decide what a run learns (the part of the run's hash that comes from ``train``)."""
    return hashed_settings(cfg)


def competition_settings(config: Config) -> dict:
    """The competition part of a run's hash."""
    return hashed_settings(config.competition)
