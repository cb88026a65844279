"""The one exception type that carries a message meant for the person at the keyboard."""


class UserError(Exception):
    """Bad input (missing file, unusable dataset, impossible setting).

    The message says what is wrong and how to fix it; the command line prints it as one
    ``error: ...`` line and exits with status 2, the app shows it as-is.
    """
