"""The one error type users see. Kept apart so that any module can raise it without importing the configs."""


class UserError(Exception):
    """Bad input from the user: the CLI prints it as one line on stderr and exits non-zero."""


class Interrupted(Exception):
    """Work stopped by Ctrl-C or SIGTERM after saving what it had: the CLI prints the message and exits 130."""
