"""The mistakes a user can make, as exception types: the CLI prints each as one line, never a traceback.

They live in the base layer so that every stage raises the same types and the CLI catches them in one place.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A config file or override that cannot make a valid run config."""


class DataError(ValueError):
    """Input data that cannot be used as it is; the message names file, row and problem."""


class ModelError(ValueError):
    """A model or adapter that cannot be found or loaded; the message says which and why."""


class RegistryError(ModelError):
    """A registry request that cannot be honoured: unknown version, tampered file, pickled weights..."""


class SaveError(OSError):
    """Saving failed (disk full, permission denied, ...); the previous good copy is untouched."""

    def __str__(self) -> str:  # the message alone, without OSError's "[Errno N]" prefix
        return str(self.strerror)


class UserError(Exception):
    """A mistake in what the user asked for on the command line."""


USER_ERRORS: tuple[type[BaseException], ...] = (UserError, ConfigError, DataError, ModelError, SaveError)


def shown(value: object, limit: int = 40) -> str:
    """A value as an error message may quote it: its repr, cut short (whatever its size)."""
    try:
        text = repr(value)
    except ValueError:  # an integer too long for Python to print
        return f"<an integer of {value.bit_length():,} bits>"
    return text if len(text) <= limit else text[: limit - 1] + "…"
