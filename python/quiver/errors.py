"""quiver's exceptions: one small hierarchy, raised by every call of the package."""


class QuiverError(Exception):
    """Base class of quiver's errors (a store that failed, an internal error)."""


class DefinitionError(QuiverError, ValueError):
    """The repository's definitions are invalid.

    ``file``, ``line``, ``column``, ``object`` and ``field`` locate the first problem;
    ``errors`` lists every problem as a dict with those keys and ``message``.
    """

    file = None
    line = None
    column = None
    object = None
    field = None
    errors = ()


class NotFoundError(QuiverError, KeyError):
    """Something named does not exist: a feature view, feature, service or source."""

    def __str__(self):  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ValidationError(QuiverError, ValueError):
    """Bad input: a missing key column, a wrong type, a malformed request."""


class StoreUnavailableError(QuiverError):
    """A store or the operating system failed; retrying later may succeed."""


__all__ = [
    "QuiverError",
    "DefinitionError",
    "NotFoundError",
    "ValidationError",
    "StoreUnavailableError",
]
