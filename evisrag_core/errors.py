"""The one family of errors a user fixes by changing what they gave: a params file, a command-line value, an input
file, a record, free disk space.

The CLI (flows/cli.py) prints such an error as one message and exits with code 2, with no traceback; anything else is
a bug or an outage and keeps its traceback (exit 1). So an error becomes "a user error" by its type, in one place:
raise `UserError` (or a subclass) with a message that says what was wrong, where, and what to do. The specific
classes (ParamsError, BadRecordError, …) also derive from the builtin a caller may already catch (ValueError,
FileNotFoundError, OSError).

Flows started by the CLI record a user error found inside a run as refused, not failed (flows/__init__.py).
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix; the message says what, where, and what to do."""


class InputNotFoundError(UserError, FileNotFoundError):
    """A file or folder the user named (or a stage should have written first) does not exist."""
