"""The suite's plugins, and the rule that keeps ``pytest -m "not integration"`` a unit run.

A test that needs a real server (mongod, Tansu, Ceph RGW, or a hub built on them) must carry the
``integration`` marker (module-level ``pytestmark`` where the whole file does). A test that asks
for one of the server fixtures without it fails before any server starts: otherwise
``-m "not integration"`` would quietly start them all.
"""

from __future__ import annotations

import pytest

pytest_plugins = ["tests.servers", "tests.hubfixtures", "tests.wheels", "tests.cleanup"]

# Every fixture that starts a real server or a hub on them (the closure of a test's fixtures is
# checked, so fixtures built on these count too).
SERVER_FIXTURES = frozenset({"mongo_server", "kafka_server", "rgw_server", "servers", "hub", "api"})


def server_fixtures(item: pytest.Item) -> set[str]:
    return set(SERVER_FIXTURES & set(getattr(item, "fixturenames", ())))


UNMARKED = pytest.StashKey[set[str]]()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Before -m selects: a server test without the marker is marked here, so a unit run never
    # selects it (and never starts a server); it then fails below in any run that selects it.
    for item in items:
        used = server_fixtures(item)
        if used and item.get_closest_marker("integration") is None:
            item.stash[UNMARKED] = used
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    used = item.stash.get(UNMARKED, None)
    if used:
        pytest.fail(f"{item.nodeid} uses {', '.join(sorted(used))} (real servers) but is not marked "
                    f"integration: add pytestmark = pytest.mark.integration (or the decorator)",
                    pytrace=False)
