"""What every layer's config section needs: the ``Section`` base class and ``ConfigError``.

Kept apart from ``fastssl/config.py`` (which assembles the sections) so that any layer can define its
section or refuse a setting without importing the layers above it.
"""
from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Unknown keys are rejected and assignments re-validated: a typo is an error, not a silent default."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class ConfigError(Exception):
    """A bad config: the message is one line naming the key or path."""
