"""User-facing errors: each prints as one line and exits with code 2."""


class UserError(Exception):
    """A mistake in the user's input (flag, file, config). Printed without a traceback."""

    exit_code = 2
