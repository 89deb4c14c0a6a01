"""User-facing errors: the CLI prints their message as one line and exits non-zero."""


class MullamaError(Exception):
    """A mistake the user can fix (bad path, wrong checkpoint, bad option).

    The message names the input and says what to do; no traceback is shown for it.
    """
