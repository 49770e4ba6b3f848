"""``export:``: what ``make export`` may cost at prediction time (:mod:`pipeline.export.budget`); none by default."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ExportConfig(BaseModel):
    """``budget``: the time the exported ensemble's prediction may take on the test set (``2h``, ``90m``, ``3600s``,
    or ``50%`` of the whole ensemble's projected time; what does not fit is dropped and the blend refitted);
    ``test_images``: how many test images that is for (default: the competition's test set; a code competition's
    hidden one is often larger)."""

    # as strict as the other sections (pipeline.config.schema.StrictModel, which imports this module)
    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True)

    budget: str | None = None
    test_images: int | None = Field(default=None, ge=1)

    @field_validator("budget")
    @classmethod
    def _duration(cls, budget: str | None) -> str | None:
        from pipeline.core.durations import parse_budget

        if budget is not None:
            parse_budget(budget, "export.budget")  # its ValueError names the key and the forms it takes
        return budget
