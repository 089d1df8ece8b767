"""Errors hmrec reports to its user as one clear line, without a stack trace."""


class HmrecError(Exception):
    """Base of every error caused by the user's input, data or configuration."""


class InputError(HmrecError):
    """An input file is missing, misnamed or malformed; the message names the file and column."""


class GateFailed(HmrecError):
    """A refresh's model did not clear the gate (hmrec.governance.gate); its lists were not published."""

    exit_status = 4  # what `hmrec` exits with (2: bad input, 3: busy lakehouse), so a scheduler can alert

    def __init__(self, message: str, decision: object = None) -> None:
        super().__init__(message)
        self.decision = decision
