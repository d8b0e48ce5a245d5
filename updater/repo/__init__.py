"""Publishing: a TUF repository of releases, as ``updater repo`` makes and keeps it.

``storage`` holds the files (a directory, or memory for tests), ``keys`` the ed25519 signing
keys, ``repository`` the four top-level roles and their versions (python-tuf's Metadata API,
securesystemslib's signers), ``image`` the facts of a USR image and its kernel, ``publish`` the
release: frames, targets, custom metadata, channel index.

The layout of a repository directory (README, "The release repository"):
``metadata/`` and ``targets/`` are served as they are; ``keys/`` never is.
"""
