"""The client side of fetching releases: transports and the TUF client around them.

``http`` is a ``requests``-based python-tuf fetcher (timeouts, one pooled session, retries with
backoff on transient failures, ranged streaming); ``local`` reads a copy of the repository from
a directory (offline media) with the same bounds; ``bounds`` is what both promise about the
bytes of a target; ``client`` wraps ``tuf.ngclient.Updater``: refresh, the releases a channel
offers, signed targets, verified small downloads and the byte source of a USR image;
``failures`` turns python-tuf's exceptions into the project's one-line errors.

Only commands that fetch import this package: ``status`` and ``kexec`` never load python-tuf
or requests.
"""
