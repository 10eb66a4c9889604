"""Which exceptions are the user's to fix: the CLI shows those as one red line (exit 2).

Anything else is a bug and keeps its traceback (exit 1). A bare ValueError is
deliberately not on the list: it is how library code says "this cannot happen".
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user fixes (a path, a file, an option); the message is shown as is."""


class InputError(UserError):
    """A user-side problem with one input file; the message is shown as is."""


class ConfigError(UserError, ValueError):
    """An option value that cannot work; the message lists the valid choices."""


class WeightsError(UserError):
    """A weights file that cannot be used; the message names the file and the fix."""
