"""Pytest plugin: real servers for the integration tests, one of each per test session.

Enable with ``pytest_plugins = ["tests.servers"]`` in tests/conftest.py. Fixtures (session scope,
started on free ports in a temporary directory, stopped when the session ends):

- ``mongo_server``: :class:`devstack.MongoServer` (single-node replica set rs0, ``--auth``) —
  ``.url`` (the hub user: any database, since every test names its own; see devstack/mongo.py),
  ``.admin_url`` (root), ``.credentials``
- ``kafka_server``: :class:`devstack.TansuServer` (Kafka protocol) — ``.bootstrap``
- ``rgw_server``: :class:`devstack.CephRGW` (S3 + bucket notifications) — ``.endpoint``,
  ``.access_key``, ``.secret_key``, ``.region``, ``.s3_client()``

A server that cannot start fails the tests that need it, with the reason and the tail of the
server's log; it never skips them, because a skipped integration test looks like a passing one.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import TypeVar

import pytest

from devstack import CephRGW, MongoServer, ServerError, TansuServer

S = TypeVar("S", MongoServer, TansuServer, CephRGW)


def _run(server: S, what: str) -> Iterator[S]:
    try:
        server.start()
    except ServerError as exc:
        server.stop()
        pytest.fail(f"{what} could not start (run ./scripts/setup?):\n{exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MongoServer]:
    """A real mongod, replica set rs0 (change streams work), with authentication: connect with
    ``mongo_server.url`` (the hub user) or ``mongo_server.admin_url``; no credentials, no access."""
    yield from _run(MongoServer(tmp_path_factory.mktemp("mongo")), "mongod")


@pytest.fixture(scope="session")
def kafka_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuServer]:
    """A Tansu broker (Kafka protocol, memory storage); ``kafka_server.bootstrap`` is host:port.

    Clients must use ``enable_idempotence=False``; short ``session_timeout_ms`` (2000-6000) keep
    group joins fast.
    """
    yield from _run(TansuServer(data_dir=tmp_path_factory.mktemp("tansu")), "tansu")


@pytest.fixture(scope="session")
def rgw_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CephRGW]:
    """Ceph RGW with one S3 user: ``.endpoint``, ``.access_key``, ``.secret_key``, ``.region``."""
    server = CephRGW(
        tmp_path_factory.mktemp("rgw"),
        access_key="test-" + secrets.token_hex(6),
        secret_key=secrets.token_urlsafe(30),
    )
    yield from _run(server, "Ceph RGW")
