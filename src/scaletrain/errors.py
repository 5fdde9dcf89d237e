class UserError(Exception):
    """Bad input from the user (config, data, arguments): reported as one `error:` line, exit code 2."""


class RunFailure(Exception):
    """A run that cannot go on for a reason outside the input (a rank stopped answering, a
    collective timed out): reported as one `error:` line, exit code 1."""
