"""The one exception type that means "the user asked for something we cannot do"."""


class UserError(Exception):
    """Bad input or settings: shown as one line (no traceback) and exit code 2."""
