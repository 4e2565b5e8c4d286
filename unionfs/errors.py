"""The one exception a refused or failed mount raises, shared by the daemon and the embedding API.

``MountError`` is a ``RuntimeError``, not an ``OSError``: no errno describes a refused mount, and an
``except OSError`` around file operations must not swallow it. The daemon raises it with the one line
for the user; the embedding API adds what it knows of the daemon process.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:  # collections (collections.abc imports it) is ~1.5 ms of a mount program's start
    from collections.abc import Sequence

__all__ = ["MountError"]


class MountError(RuntimeError):
    """The union could not be mounted (or its daemon died).

    Attributes: ``message`` (the one-line reason, without the ``pyunionfs:`` prefix), ``returncode``
    (the daemon's exit status, or None when it was still running and had to be killed, or when raised
    inside the daemon), ``log`` (the daemon's whole stdout/stderr), ``argv`` (the daemon's command line).
    """

    def __init__(self, message: str, *, returncode: int | None = None, log: str = "", argv: Sequence[str] = ()):
        super().__init__(message)
        self.message = message
        self.returncode = returncode
        self.log = log
        self.argv = list(argv)
