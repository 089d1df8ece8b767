"""Errors hmrec reports to its user as one clear line, without a stack trace."""


class HmrecError(Exception):
    """Base of every error caused by the user's input, data or configuration."""


class InputError(HmrecError):
    """An input file is missing, misnamed or malformed; the message names the file and column."""
