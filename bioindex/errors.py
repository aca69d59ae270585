"""Errors that are the user's to fix. The CLI prints them as one line, without a traceback."""


class BioindexError(Exception):
    """A problem with the input, the store or the environment, explained in one sentence."""


class ModelMismatchError(BioindexError):
    """A store was asked to take or answer with vectors from a model other than its own."""
