"""python-tuf's exceptions turned into the project's errors, at the edge of the client.

python-tuf splits failures by who is at fault (``RepositoryError``: the metadata is bad;
``DownloadError``: getting it failed); so does this project (``VerificationError``,
``TransportError``). Each class gets words an operator can act on; python-tuf's own message,
which names the role and the versions, follows. The original exception stays attached
(``raise ... from``) for ``--debug``.

This module decides nothing about retrying; it only names causes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from tuf.api import exceptions as tuf_errors

from updater.errors import DeviceError, TransportError, UpdaterError, VerificationError

_CLOCK_HINT = "re-sign the repository with updater repo expire, or check this machine's clock"


# python-tuf's exception classes, most specific first: (class, project error, words, hint).
_CAUSES: tuple[tuple[type[Exception], type[UpdaterError], str, str | None], ...] = (
    (tuf_errors.DownloadHTTPError, TransportError, "", None),
    (tuf_errors.DownloadLengthMismatchError, VerificationError,
     "more data than the signed length allows: ", None),
    (tuf_errors.DownloadError, TransportError, "", None),
    (tuf_errors.ExpiredMetadataError, VerificationError, "signed metadata has expired: ",
     _CLOCK_HINT),
    (tuf_errors.BadVersionNumberError, VerificationError,
     "metadata versions do not fit together (a rollback to older metadata, or files of "
     "different versions mixed): ", None),
    (tuf_errors.UnsignedMetadataError, VerificationError,
     "metadata not signed by enough trusted keys: ", None),
    (tuf_errors.LengthOrHashMismatchError, VerificationError,
     "a file does not match its signed length or hash: ", None),
    (tuf_errors.RepositoryError, VerificationError, "bad repository metadata: ", None),
)  # fmt: skip


def translate(exc: BaseException, what: str) -> UpdaterError:
    """The project's error for ``exc``, which happened while doing ``what``."""
    if isinstance(exc, UpdaterError):
        return exc
    # Our fetchers raise TransportError and VerificationError themselves; python-tuf may have
    # wrapped one in a DownloadError.
    for cause in (exc.__cause__, exc.__context__):
        if isinstance(cause, UpdaterError):
            return cause
    text = str(exc) or type(exc).__name__
    for kind, error, words, hint in _CAUSES:
        if isinstance(exc, kind):
            return error(f"{what}: {words}{text}", hint=hint)
    if isinstance(exc, OSError):
        where = f" {exc.filename}" if exc.filename else ""
        return DeviceError(f"{what}: cannot write the metadata cache{where}: {exc.strerror or exc}")
    raise exc


@contextlib.contextmanager
def at_edge(what: str) -> Iterator[None]:
    """Run a python-tuf call; whatever it raises leaves as one of the project's errors."""
    try:
        yield
    except (UpdaterError, tuf_errors.RepositoryError, tuf_errors.DownloadError, OSError) as exc:
        error = translate(exc, what)
        if error is exc:
            raise
        if error is exc.__cause__ or error is exc.__context__:
            raise error from None  # our own error, which python-tuf had wrapped
        raise error from exc
