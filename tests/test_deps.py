"""Function dependencies against a real hub and real pip (hub/catalog/deps.py).

Each test uses its own dependency set where it counts builds, so the session hub's shared
DATA_DIR/deps does not couple them. The hub's pip sees only the session's wheelhouse of pinned
wheels (tests/wheels.py: ``PIP_NO_INDEX``, ``PIP_FIND_LINKS``), so what resolves cannot change
with the index; one test, marked ``package_index``, resolves a pinned set from the real index.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import shutil
import signal
import textwrap
import uuid
import zipfile
from pathlib import Path
from typing import Any

import pytest

from hub.app import Hub
from hub.catalog.code import CodeError
from hub.catalog.deps import Deps, DepsError, explain, requirements_of
from hub.spec.requirements import check_requirement
from hub.sandbox.base import FunctionRuntime, InvokeContext, Status
from hub.sandbox.pool import SandboxPool
from tests.hubfixtures import Api, make_settings
from tests.wheels import SDIST_ONLY

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(autouse=True)
def _pinned_wheels(request: pytest.FixtureRequest) -> None:
    """The hub's pip resolves from the wheelhouse alone, except in the one index test."""
    node = request.node
    if node.get_closest_marker("integration") and not node.get_closest_marker("package_index"):
        request.getfixturevalue("local_wheels")

SIX = textwrap.dedent("""
    import sys
    import six

    def handler(event, context):
        return {"file": six.__file__, "version": six.__version__, "path": sys.path}
""")


def put_body(code: str, **cfg: Any) -> dict[str, Any]:
    files = cfg.pop("files", {})
    return {"handler": "main.handler", "code": {"files": {"main.py": code, **files}}, **cfg}


async def deps_record(hub: Hub, key: str) -> dict[str, Any]:
    record = await hub.store.db.deps.find_one({"_id": key})
    assert record is not None, key
    return dict(record)


async def invoke(api: Api, name: str, event: Any = None) -> dict[str, Any]:
    out: dict[str, Any] = await api.ok("POST", f"/v1/functions/{name}/invoke", event or {})
    return out


@pytest.mark.integration
async def test_requirements_field_installs_and_runs_from_opt_python(api: Api, hub: Hub, unique: str) -> None:
    name = f"six-{unique}"
    head = await api.ok("PUT", f"/v1/functions/{name}", put_body(SIX, requirements=["six==1.16.0"]))
    deps = head["deps"]
    assert deps["packages"] == ["six==1.16.0"]
    assert len(deps["hash"]) == 32 and deps["size_bytes"] > 10_000 and deps["build_s"] >= 0
    assert head["requirements"] == ["six==1.16.0"]
    # the function's record and its stored version both say so
    shown = await api.ok("GET", f"/v1/functions/{name}")
    assert shown["deps"] == deps
    version = await hub.store.get_version(name, head["version"])
    assert version is not None and version["deps"] == deps

    out = await invoke(api, name)
    assert out["status"] == "succeeded", out
    result = out["result"]
    assert result["version"] == "1.16.0"
    assert result["file"].startswith("/opt/python/six.py")
    path = result["path"]
    # the code first, the dependencies after the standard library (nothing can shadow the stdlib)
    assert path[0] == "/var/task" and path[-1] == "/opt/python"
    assert any(p.endswith("/lib/python3.11") for p in path[1:-1])

    record = await deps_record(hub, deps["hash"])
    assert record["builds"] == 1
    assert record["packages"][0]["name"] == "six" and len(record["packages"][0]["sha256"]) == 64
    assert hub.registry.deps.path(deps["hash"]).is_dir()


@pytest.mark.integration
async def test_same_resolved_set_is_built_once_and_shared(api: Api, hub: Hub, unique: str) -> None:
    # The set {six 1.16.0}, spelt three ways: the field, a requirements.txt, a zip.
    first = await api.ok("PUT", f"/v1/functions/share-a-{unique}", put_body(SIX, requirements=["six==1.16.0"]))
    key = first["deps"]["hash"]
    built = await deps_record(hub, key)
    directory = hub.registry.deps.path(key)
    inode = directory.stat().st_ino
    second = await api.ok("PUT", f"/v1/functions/share-b-{unique}", put_body(
        SIX, files={"requirements.txt": "# what we need\nSIX == 1.16.0   # pinned\n\n"}))
    assert second["requirements"] is None
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("main.py", SIX)
        zf.writestr("requirements.txt", "six==1.16.0\n")
    third = await api.ok("PUT", f"/v1/functions/share-c-{unique}", {
        "handler": "main.handler", "code": {"zip_base64": base64.b64encode(buf.getvalue()).decode()}})
    assert second["deps"]["hash"] == third["deps"]["hash"] == key
    assert second["deps"]["packages"] == ["six==1.16.0"]
    record = await deps_record(hub, key)
    assert record["builds"] == built["builds"], "a set that exists is never built again"
    assert directory.stat().st_ino == inode
    for fn in ("share-b", "share-c"):
        out = await invoke(api, f"{fn}-{unique}")
        assert out["status"] == "succeeded" and out["result"]["file"].startswith("/opt/python/"), out


# requests and every dependency it has, pinned: the one resolution that goes to the real index
REQUESTS_PINS = ["certifi==2024.8.30", "charset-normalizer==3.4.0", "idna==3.10", "requests==2.32.3",
                 "urllib3==2.2.3"]


@pytest.mark.integration
@pytest.mark.package_index
async def test_requests_with_its_dependencies_from_the_package_index(api: Api, unique: str) -> None:
    code = textwrap.dedent("""
        import certifi, requests

        def handler(event, context):
            return {"version": requests.__version__, "file": requests.__file__,
                    "ca": open(certifi.where()).read(30)}
    """)
    head = await api.ok("PUT", f"/v1/functions/req-{unique}",
                        put_body(code, files={"requirements.txt": "".join(p + "\n" for p in REQUESTS_PINS)}))
    assert head["deps"]["packages"] == REQUESTS_PINS  # nothing more, nothing else
    out = await invoke(api, f"req-{unique}")
    assert out["status"] == "succeeded", out
    assert out["result"]["file"] == "/opt/python/requests/__init__.py"
    assert out["result"]["version"] == "2.32.3"
    assert "BEGIN CERTIFICATE" in out["result"]["ca"] or out["result"]["ca"].startswith("\n")
    assert out["cold_start"] is True


@pytest.mark.integration
async def test_sending_a_stored_version_again_reuses_its_pins(api: Api, hub: Hub, unique: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    body = put_body(SIX, requirements=["six==1.16.0"])
    first = await api.ok("PUT", f"/v1/functions/again-{unique}", body)

    async def no_resolve(requirements: list[str]) -> None:
        raise AssertionError("resolved again")

    monkeypatch.setattr(hub.registry.deps, "prepare", no_resolve)
    again = await api.ok("PUT", f"/v1/functions/again-{unique}", body)
    assert again["new_version"] is False and again["deps"] == first["deps"]


@pytest.mark.integration
async def test_field_and_file_at_once_is_refused(api: Api, unique: str) -> None:
    status, body = await api.call("PUT", f"/v1/functions/both-{unique}", put_body(
        SIX, requirements=["six==1.16.0"], files={"requirements.txt": "six==1.16.0\n"}))
    assert status == 400 and "not both" in body["error"], body
    assert (await api.call("GET", f"/v1/functions/both-{unique}"))[0] == 404


@pytest.mark.parametrize("line", [
    "-r other.txt", "--index-url https://evil.example/simple", "-e .", "--extra-index-url=http://x",
    "-f /opt/wheels", "https://example.com/pkg-1.0-py3-none-any.whl", "git+https://github.com/x/y",
    "./vendored", "/etc/passwd", "~/pkg", "pkg @ https://example.com/pkg.whl", "pkg @ file:///etc/passwd",
    "local-1.0-py3-none-any.whl", "archive.tar.gz", "six==${HUB_API_TOKEN}", "six ==", "not a requirement",
    "x" * 201,
])
@pytest.mark.integration
async def test_pip_options_urls_and_paths_are_refused(api: Api, unique: str, line: str) -> None:
    for body in (put_body(SIX, requirements=[line]), put_body(SIX, files={"requirements.txt": f"six\n{line}\n"})):
        status, answer = await api.call("PUT", f"/v1/functions/opt-{unique}", body)
        assert status == 400, (line, answer)
        text = str(answer)
        assert "requirement" in text, answer
    assert (await api.call("GET", f"/v1/functions/opt-{unique}"))[0] == 404


@pytest.mark.integration
async def test_too_many_requirements_are_refused(api: Api, unique: str) -> None:
    status, body = await api.call("PUT", f"/v1/functions/many-{unique}", put_body(
        SIX, requirements=[f"pkg{i}" for i in range(101)]))
    assert status == 400, body
    many = "".join(f"pkg{i}\n" for i in range(101))
    status, body = await api.call("PUT", f"/v1/functions/many-{unique}", put_body(SIX, files={"requirements.txt": many}))
    assert status == 400 and "limit is 100" in body["error"], body


@pytest.mark.parametrize("requirements, says", [
    (["this-package-does-not-exist-trigger-hub==1.0"],
     ["this-package-does-not-exist-trigger-hub==1.0", "no such package exists", "wheel"]),
    # in the wheelhouse as a source distribution only, whose setup.py would leave a mark
    ([f"{SDIST_ONLY}==1.0"], [f"{SDIST_ONLY}==1.0", "no wheel found", "never builds source distributions"]),
    (["six==99.0"], ["six==99.0", "no release matches", "1.16.0"]),
    (["requests==2.31.0", "urllib3==1.20"], ["conflict", "urllib3==1.20", "requests 2.31.0 depends on urllib3"]),
])
@pytest.mark.integration
async def test_build_failure_is_a_400_and_nothing_is_stored(api: Api, unique: str, requirements: list[str],
                                                            says: list[str]) -> None:
    name = f"broken-{unique}"
    status, body = await api.call("PUT", f"/v1/functions/{name}", put_body(SIX, requirements=requirements))
    assert status == 400, body
    for text in says:
        assert text in body["error"], body
    assert "/work" not in body["error"] and "/tmp" not in body["error"] and "/opt/" not in body["error"]
    assert len(body["error"]) < 2200
    assert (await api.call("GET", f"/v1/functions/{name}"))[0] == 404


@pytest.mark.integration
async def test_the_hub_resolves_from_the_wheelhouse_alone(api: Api, unique: str) -> None:
    # the index has dozens of six releases; the wheelhouse one
    status, body = await api.call("PUT", f"/v1/functions/wh-{unique}", put_body(SIX, requirements=["six==99.0"]))
    assert status == 400 and body["error"].endswith("releases with a wheel for this platform: 1.16.0"), body


@pytest.mark.integration
async def test_failed_update_leaves_the_running_version_alone(api: Api, unique: str) -> None:
    name = f"keep-{unique}"
    good = await api.ok("PUT", f"/v1/functions/{name}", put_body(SIX, requirements=["six==1.16.0"]))
    status, body = await api.call("PUT", f"/v1/functions/{name}", put_body(
        SIX, requirements=["this-package-does-not-exist-trigger-hub==1.0"]))
    assert status == 400, body
    shown = await api.ok("GET", f"/v1/functions/{name}")
    assert shown["version"] == good["version"] and len(shown["versions"]) == 1
    assert (await invoke(api, name))["status"] == "succeeded"


@pytest.mark.integration
async def test_missing_directory_is_rebuilt_on_next_use(api: Api, hub: Hub, unique: str) -> None:
    code = "import idna\n\ndef handler(event, context):\n    return [idna.__version__, idna.__file__]\n"
    name = f"rebuild-{unique}"
    head = await api.ok("PUT", f"/v1/functions/{name}", put_body(code, requirements=["idna==3.7"]))
    key = head["deps"]["hash"]
    assert (await invoke(api, name))["result"][0] == "3.7"
    before = (await deps_record(hub, key))["builds"]
    # As if this host had never seen the set (another instance, a wiped data dir); even the warm
    # worker goes, so the next invocation starts from the rebuilt directory.
    shutil.rmtree(hub.registry.deps.path(key))
    await hub.pool.retire(name)
    out = await invoke(api, name)
    assert out["status"] == "succeeded" and out["cold_start"], out
    assert out["result"] == ["3.7", "/opt/python/idna/__init__.py"]
    assert hub.registry.deps.path(key).is_dir()
    record = await deps_record(hub, key)
    assert record["builds"] == before + 1
    assert (await api.ok("GET", f"/v1/functions/{name}"))["deps"]["hash"] == key  # same pins, same key


@pytest.mark.integration
async def test_another_instance_builds_the_set_from_the_recorded_pins(
        api: Api, hub: Hub, servers: dict[str, Any], http: Any, tmp_path: Path, unique: str) -> None:
    code = "import idna\n\ndef handler(event, context):\n    return idna.__version__\n"
    name = f"other-{unique}"
    head = await api.ok("PUT", f"/v1/functions/{name}", put_body(code, requirements=["idna==3.6"]))
    other = Hub(make_settings(servers, tmp_path / "other-data", hub.settings.mongo_db))
    await other.start()
    try:
        out = await Api(http, other.url).ok("POST", f"/v1/functions/{name}/invoke", {})
        assert out["status"] == "succeeded" and out["result"] == "3.6", out
        assert other.registry.deps.path(head["deps"]["hash"]).is_dir()
        assert (await deps_record(hub, head["deps"]["hash"]))["builds"] == 2  # once per host
    finally:
        await other.stop()


@pytest.mark.integration
async def test_concurrent_deploys_of_one_new_set_build_it_once(api: Api, hub: Hub, unique: str) -> None:
    code = "import idna\n\ndef handler(event, context):\n    return idna.__version__\n"
    heads = await asyncio.gather(*(
        api.ok("PUT", f"/v1/functions/conc-{i}-{unique}", put_body(code, requirements=["idna==3.5"]))
        for i in range(3)))
    keys = {h["deps"]["hash"] for h in heads}
    assert len(keys) == 1
    assert (await deps_record(hub, keys.pop()))["builds"] == 1


@pytest.mark.integration
async def test_sandbox_cannot_write_to_its_dependencies(api: Api, unique: str) -> None:
    code = textwrap.dedent("""
        import errno, os, six

        def handler(event, context):
            tried = {}
            for what, act in [
                ("new file", lambda: open("/opt/python/evil.py", "w")),
                ("existing file", lambda: open(six.__file__, "a")),
                ("mkdir", lambda: os.mkdir("/opt/python/evil")),
                ("remove", lambda: os.remove(six.__file__)),
                ("chmod", lambda: os.chmod("/opt/python", 0o777)),
            ]:
                try:
                    act()
                    tried[what] = "ok"
                except OSError as exc:
                    tried[what] = errno.errorcode.get(exc.errno, str(exc.errno))
            return tried
    """)
    await api.ok("PUT", f"/v1/functions/ro-{unique}", put_body(code, requirements=["six==1.16.0"]))
    out = await invoke(api, f"ro-{unique}")
    assert out["status"] == "succeeded", out
    for what, result in out["result"].items():
        assert result in ("EROFS", "EACCES", "EPERM"), (what, result)


@pytest.mark.integration
async def test_process_isolation_uses_the_host_directory(hub: Hub, api: Api, unique: str,
                                                         tmp_path_factory: pytest.TempPathFactory) -> None:
    head = await api.ok("PUT", f"/v1/functions/proc-{unique}", put_body(SIX, requirements=["six==1.16.0"]))
    deps_dir = hub.registry.deps.path(head["deps"]["hash"])
    root = tmp_path_factory.mktemp("procdeps")
    code = root / "code"
    code.mkdir()
    (code / "main.py").write_text(SIX)
    pool = SandboxPool("process", data_dir=root / "data")
    await pool.start()
    try:
        fn = FunctionRuntime(name=f"proc-{unique}", version="v1", handler="main.handler", code_dir=code,
                             deps_dir=deps_dir)
        report = await pool.invoke(fn, {}, InvokeContext(invocation_id=uuid.uuid4().hex, trigger=None))
        assert report.status is Status.succeeded, report
        assert report.result["file"] == str(deps_dir / "six.py")
    finally:
        await pool.close()


@pytest.mark.integration
async def test_plain_functions_do_not_import_site(api: Api, unique: str) -> None:
    code = "import sys\n\ndef handler(event, context):\n    return 'site' in sys.modules\n"
    await api.put_function(f"plain-{unique}", code)
    assert (await invoke(api, f"plain-{unique}"))["result"] is False


# ------------------------------------------------------------------------- without a hub


def test_requirement_lines_are_normalised() -> None:
    assert check_requirement("  Requests[socks] >= 2.31 ; python_version >= '3.8' ") == \
        'Requests[socks]>=2.31; python_version >= "3.8"'
    text = b"# deps\nsix==1.16.0  # pinned\n\nidna \\\n  ==3.7\n"
    assert requirements_of(None, {"requirements.txt": text}) == ["six==1.16.0", "idna==3.7"]
    assert requirements_of(None, {"main.py": b""}) == []
    assert requirements_of([], {"main.py": b""}) == []
    with pytest.raises(DepsError, match="requirements.txt line 3"):
        requirements_of(None, {"requirements.txt": b"six\n\n--index-url http://x\n"})
    with pytest.raises(CodeError, match="not UTF-8"):
        requirements_of(None, {"requirements.txt": b"\xff\xfe\x00"})


def test_pip_messages_lose_host_paths() -> None:
    out = ("Looking in links: /opt/wheels\nProcessing /root/.cache/x.whl\n"
           "ERROR: Could not install packages due to an OSError: [Errno 28] No space left on device: "
           "'/work/main/.hub/data/deps/.build-abc/python/x'\n")
    text = explain(out, {"python": "cpython-3.11", "tag": "cp311-cp311-x"}, ["/work/main/.hub/data/deps"])
    assert "No space left on device" in text and "/work" not in text and "/root" not in text


async def test_a_pip_that_takes_too_long_is_stopped(tmp_path: Path) -> None:
    fake = tmp_path / "fake-python"  # stands in for "python -m pip": hangs, with a child
    pids = tmp_path / "pids"
    fake.write_text(f"#!/bin/sh\nsleep 60 &\necho $$ $! > {pids}\nwait\n")
    os.chmod(fake, 0o755)
    deps = Deps(None, tmp_path, timeout_s=1.0, python=str(fake))  # type: ignore[arg-type]
    with pytest.raises(DepsError, match="took longer than 1 s"):
        await deps._pip([], tmp_path, "resolving the dependencies")
    # stopped, not waited out: pip and what it started are gone when the error is raised
    for pid in map(int, pids.read_text().split()):
        # gone, a killed zombie its new parent has not reaped yet, or SIGKILL pending on a busy
        # machine (the kernel shows 'R' until the process next runs and dies)
        try:
            status = dict(line.split(":\t", 1) for line in
                          Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line)
        except FileNotFoundError:
            continue
        pending = int(status["SigPnd"], 16) | int(status["ShdPnd"], 16)
        assert status["State"][0] in "ZX" or pending & (1 << (signal.SIGKILL - 1)), (pid, status["State"])
