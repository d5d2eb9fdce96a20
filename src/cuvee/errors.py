"""Errors a user can act on: each carries what went wrong, where, and how to fix it."""

from __future__ import annotations


class CuveeError(Exception):
    """An error shown to the user as one clear message (no traceback), with an optional fix."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class ConfigError(CuveeError):
    """A setting, flag or config file is invalid."""


class StoreError(CuveeError):
    """The model store cannot do what was asked (missing model, broken directory, name taken)."""


class ModelNotFound(StoreError):
    """No model of that name is in the store."""


class CatalogError(CuveeError):
    """A base model cannot be obtained: unknown name or missing package."""


class ModelFileError(CuveeError):
    """A model file or directory given by the user is unreadable, corrupt or unsupported."""


class DataError(CuveeError):
    """An instruction data file cannot be read as a whole (missing, wrong format)."""


class DocsError(CuveeError):
    """A document collection cannot do what was asked (unknown collection, unreadable file,
    index built with another embedding model)."""
