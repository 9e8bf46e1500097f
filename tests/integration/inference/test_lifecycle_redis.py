"""Product lifecycle on a real redis-server, bare and with a durable directory:
tests/lifecycle_contract.py."""

from lifecycle_contract import *  # noqa: F401,F403  (the lifecycle contract, on Redis and tiered)
