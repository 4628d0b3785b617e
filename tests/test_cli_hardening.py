"""The CLI as something hostile input reaches (issue 16 §6): a redirect never carries the token
to another host, ``.hub/dev.env`` is read only from the current directory or its project's root,
a function's output cannot drive the terminal, and a deployed directory's symlinks stay inside it.
No hub needed: the redirect test runs two loopback HTTP servers of its own."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.cli.client import ApiError, Client, dev_env
from hub.cli.commands import printable
from hub.cli.deploy import DeployError, load


@pytest.fixture
def redirecting_hub() -> Iterator[tuple[str, list[str]]]:
    """A "hub" that redirects everything to a second server, which records what it was sent."""
    seen: list[str] = []

    class Elsewhere(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            seen.append(self.headers.get("Authorization") or "")
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Elsewhere)
    target = f"http://127.0.0.1:{other.server_address[1]}/v1/functions"

    class Redirector(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(302)
            self.send_header("Location", target)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    hub = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirector)
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (other, hub)]
    for t in threads:
        t.start()
    try:
        yield f"http://127.0.0.1:{hub.server_address[1]}", seen
    finally:
        for s in (hub, other):
            s.shutdown()
            s.server_close()


def test_a_redirect_is_not_followed_and_the_token_stays_home(redirecting_hub: tuple[str, list[str]]) -> None:
    url, seen = redirecting_hub
    with pytest.raises(ApiError) as err:
        Client(url=url, token="secret-token-that-must-not-leave-0123").call("GET", "/v1/functions")
    assert err.value.status == 302 and "not followed" in err.value.message
    assert seen == []  # the other host was never asked, let alone given the token


def test_dev_env_comes_from_here_or_the_project_root_only(tmp_path: Path) -> None:
    outside = tmp_path / ".hub"
    outside.mkdir()
    (outside / "dev.env").write_text("HUB_URL=http://evil.invalid:80\nHUB_API_TOKEN=stolen\n")
    project = tmp_path / "proj"
    (project / "sub" / "deeper").mkdir(parents=True)
    (project / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    assert dev_env(project / "sub" / "deeper") == {}  # the parent above the project is not read
    (project / ".hub").mkdir()
    (project / ".hub" / "dev.env").write_text("HUB_URL='http://127.0.0.1:8080'\n")
    assert dev_env(project / "sub" / "deeper") == {"HUB_URL": "http://127.0.0.1:8080"}
    (project / "sub" / ".hub").mkdir()
    (project / "sub" / ".hub" / "dev.env").write_text("HUB_URL=http://127.0.0.1:9999\n")
    assert dev_env(project / "sub") == {"HUB_URL": "http://127.0.0.1:9999"}  # the current directory's first
    assert dev_env(project / "sub" / "deeper") == {"HUB_URL": "http://127.0.0.1:8080"}  # not a middle one


@pytest.mark.parametrize("raw,shown", [
    ("\x1b]0;pwned\x07", "\\x1b]0;pwned\\x07"),          # set the window title
    ("\x1b[2J\x1b[H", "\\x1b[2J\\x1b[H"),              # clear the screen
    ("ok\tcolumn\nnext line", "ok\tcolumn\nnext line"),  # tabs and newlines are kept
    ("\x9b31m", "\\x9b31m"),                            # a C1 CSI
    ("\r overwritten", "\\x0d overwritten"),
])
def test_function_output_cannot_drive_the_terminal(raw: str, shown: str) -> None:
    assert printable(raw) == shown


def test_a_symlink_out_of_the_deployed_directory_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("ssh key")
    fn = tmp_path / "fn"
    fn.mkdir()
    (fn / "main.py").write_text("def handler(event, context):\n    return 1\n")
    (fn / "inside.py").symlink_to(fn / "main.py")  # inside: fine
    assert sorted(load(fn).files) == ["inside.py", "main.py"]
    (fn / "key.txt").symlink_to(secret)
    with pytest.raises(DeployError, match="key.txt is a symlink to a place outside"):
        load(fn)
    (fn / "key.txt").unlink()
    (fn / "etc").symlink_to(Path("/etc"), target_is_directory=True)
    with pytest.raises(DeployError, match="etc is a symlink"):
        load(fn)
