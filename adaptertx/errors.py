"""The one exception type users see: a clear, one-line message naming what was wrong."""


class AdaptertxError(Exception):
    """Bad input or a failed precondition; the CLI prints the message and exits non-zero."""
