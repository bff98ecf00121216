"""The base of every error the user is meant to read: the ``quantcheck`` command and the pytest
plugin catch :class:`QuantcheckError` and print its message as one line, with no traceback.

It imports nothing from the package, so that any module can subclass it without an import cycle.
"""

from __future__ import annotations


class QuantcheckError(Exception):
    """Bad input or a refused operation; ``str()`` is the whole one-line message naming the file
    and the fix."""
