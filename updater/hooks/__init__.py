"""Hooks: operator executables run at the stages of an update (``rules``: the pure part;
``runner``: running a stage's directory; ``ledger``: the first-boot record; ``slotmount``: the
new slot mounted read-only for post-install; ``firstboot``: once per newly activated slot)."""
