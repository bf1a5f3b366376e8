"""Errors a user can act on; the command line prints them without a traceback."""


class TwinklesError(Exception):
    """Base of errors that explain what is wrong and how to proceed."""
