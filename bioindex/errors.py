"""Errors that are the user's to fix. The CLI prints them as one line, without a traceback.

An error may carry a Remedy: what to do about it, said for the interface in use. The same
missing taxonomy is `--taxonomy PATH` in the CLI, `taxonomy=` in Python and `labels=` over
HTTP, and the CLI only suggests an option the command at hand has.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

INTERFACES = ("python", "cli", "http")


@dataclass(frozen=True)
class Remedy:
    python: str = ""
    http: str = ""
    # (an option the command must have, or "" for any command, the advice), best first.
    cli: tuple[tuple[str, str], ...] = ()

    def text(self, interface: str, options: Collection[str] = ()) -> str:
        if interface == "cli":
            return next((advice for option, advice in self.cli
                         if not option or option in options), "")  # fmt: skip
        return getattr(self, interface, "") or self.python


class BioindexError(Exception):
    """A problem with the input, the store or the environment, explained in one sentence."""

    def __init__(self, message: str, *, remedy: Remedy | None = None):
        super().__init__(message)
        self.message = message
        self.remedy = remedy

    def explain(self, interface: str = "python", options: Collection[str] = ()) -> str:
        """The message, and the remedy for `interface` (with the CLI command's `options`)."""
        advice = self.remedy.text(interface, options) if self.remedy else ""
        return f"{self.message}; {advice}" if advice else self.message

    def __str__(self) -> str:
        return self.explain("python")


class ModelMismatchError(BioindexError):
    """A store was asked to take or answer with vectors from a model other than its own."""


class UnknownTaxonError(BioindexError):
    """A name that no known taxon carries; `close` are the known names it resembles."""

    def __init__(self, message: str, close: list[str] | None = None):
        super().__init__(message)
        self.close = close or []


class NoTaxaError(BioindexError):
    """The catalog names no taxa (a plain folder of photos) and the call needs some."""


class ImageTooLarge(BioindexError):
    """An image over the pixel cap, found from its header before it is decoded."""
