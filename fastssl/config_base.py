"""The base class of every config section (kept apart so layers can define their own sections)."""
from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Unknown keys are rejected and assignments re-validated: a typo is an error, not a silent default."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())
