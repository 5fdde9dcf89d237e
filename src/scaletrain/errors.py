class UserError(Exception):
    """Bad input from the user (config, data, arguments): reported as one `error:` line, exit code 2."""
