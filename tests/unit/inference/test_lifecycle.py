"""Product lifecycle on the in-process stores (memory, file): tests/lifecycle_contract.py."""

from lifecycle_contract import *  # noqa: F401,F403  (the lifecycle contract, on memory and file)
