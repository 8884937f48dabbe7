"""The ledger's errors, apart from the database code: the dispatcher and the CLI catch them without
importing SQLAlchemy (a one-shot command imports it on a thread of its own, while Ray starts)."""


class LedgerError(Exception):
    """The ledger cannot be opened or written."""


class LedgerWriteError(LedgerError):
    """A write was refused (locked, disk full, read-only, damaged); the caller may retry it."""
