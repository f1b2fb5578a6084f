"""Errors that dnnlab reports to users as one clear line.

Every error names its culprit (a layer path, a config key, a value). Pipelines catch
`DnnlabError`, print `str(err)` on one line and exit non-zero.
"""
from __future__ import annotations

from typing import Any

MISSING = "???"  # a settings field the config must give (OmegaConf's marker: Hydra asks for it)


class DnnlabError(Exception):
    """Base class: an error whose message is meant to be shown to a user as is."""


class ConfigError(DnnlabError, ValueError):
    """A config key has a bad value. The message names the key and the value.

    `ConfigError.at(key, value, expected)` reads `key=value: expected`; a settings dataclass
    raises it with its own field name and the config loader (`dnnlab.run.config.to_settings`) adds
    the path of the node (`epochs` -> `trainer.epochs`).
    """

    def __init__(self, message: str, key: str | None = None, value: Any = None,
                 expected: str | None = None):
        super().__init__(message)
        self.key, self.value, self.expected = key, value, expected

    @classmethod
    def at(cls, key: str, value: Any, expected: str) -> ConfigError:
        return cls(f"{key}={value!r}: {expected}", key=key, value=value, expected=expected)

    def under(self, prefix: str) -> ConfigError:
        """The same error with `prefix.` before its key (no-op without a key)."""
        if self.key is None or not prefix:
            return self
        return type(self).at(f"{prefix}.{self.key}", self.value, self.expected)


class ShapeError(DnnlabError, ValueError):
    """A shape a layer cannot take. The message names the layer path and the shapes."""


def require(ok: bool, key: str, value: Any, expected: str) -> None:
    """Raise ConfigError.at(key, value, expected) unless `ok` (for __post_init__ checks)."""
    if not ok:
        raise ConfigError.at(key, value, expected)


class UnknownKeyError(ConfigError):
    """A key the config's schema does not have (a typo such as `+trainer.epoch=3`). Exit
    status 2, like the unknown keys Hydra finds while composing."""

    exit_code = 2


def first_line(x: object) -> str:
    """The first non-empty line of an error's (or any object's) text; its type's name if none."""
    lines = [s.strip() for s in str(x).strip().splitlines() if s.strip()]
    return lines[0] if lines else type(x).__name__
