"""The error types a user can act on.  Only the CLI (pcn/cli.py) turns them into one line
on stderr and an exit code; the code that raises them never prints or exits."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input or environment: printed as one line, exit code 2."""


class DatasetError(ValueError):
    """A dataset on disk that is missing, malformed or not in its official layout: one line
    naming the file or folder and what was expected (docs/datasets.md)."""
