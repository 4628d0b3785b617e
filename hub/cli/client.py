"""A small client for the hub's HTTP API, for the CLI and scripts (standard library only).

Where the hub is and its token come from ``--url``/``--token``, else ``HUB_URL``/``HUB_API_TOKEN``,
else the ``.hub/dev.env`` the run command writes (looked for from the current directory up).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class ApiError(Exception):
    """The hub answered with an error (``status``) or could not be reached (``status`` 0)."""

    def __init__(self, status: int, message: str, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.body = body


def project_root(start: Path) -> Path | None:
    """The nearest directory at or above ``start`` that holds a project (``.git`` or ``pyproject.toml``)."""
    for d in (start, *start.parents):
        if (d / ".git").exists() or (d / "pyproject.toml").is_file():
            return d
    return None


def dev_env(start: Path | None = None) -> dict[str, str]:
    """KEY=VALUE lines of ``.hub/dev.env`` in the current directory, else in the root of the
    project the CLI was started in; never of some other parent directory (a stray ``.hub`` higher
    up could point the CLI, and its token, at another host). Empty if there is none."""
    here = (start or Path.cwd()).resolve()
    root = project_root(here)
    for d in (here,) if root is None or root == here else (here, root):
        path = d / ".hub" / "dev.env"
        if path.is_file():
            out: dict[str, str] = {}
            for line in path.read_text().splitlines():
                key, sep, value = line.strip().partition("=")
                if sep and not key.startswith("#"):
                    out[key.strip()] = value.strip().strip("'\"")
            return out
    return {}


def request_target(path: str, query: dict[str, Any] | None = None) -> str:
    """``path`` (which may carry its own ``?query``) and ``query`` as a request target.

    Only the path is percent-quoted, a segment at a time (so a name with a space or a ``?``
    reaches the hub as that name, for the hub to refuse): quoting the whole string turned the
    ``?``, ``&`` and ``=`` of ``/v1/invocations?trigger=x`` into part of the path, a 404. The query,
    from the path and from ``query`` (``None`` values left out), goes through ``urlencode``.
    """
    bare, sep, inline = path.partition("?")
    target = "/".join(urllib.parse.quote(segment, safe=":@") for segment in bare.split("/"))
    params: list[tuple[str, Any]] = urllib.parse.parse_qsl(inline, keep_blank_values=True) if sep else []
    params += [(k, v) for k, v in (query or {}).items() if v is not None]
    return target + ("?" + urllib.parse.urlencode(params) if params else "")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """The hub never redirects: a 3xx is not followed, so the token is never sent to another host."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> None:
        raise urllib.error.HTTPError(req.full_url, code, f"redirect to {newurl} not followed (the CLI "
                                     f"never sends its token elsewhere)", headers, fp)


_OPENER = urllib.request.build_opener(_NoRedirect)


class Client:
    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 120.0) -> None:
        env = {**dev_env(), **os.environ}
        self.url = (url or env.get("HUB_URL") or "http://127.0.0.1:8080").rstrip("/")
        self.token = token or env.get("HUB_API_TOKEN") or ""
        self.timeout = timeout

    def call(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None,
             raw: bytes | None = None, timeout: float | None = None) -> Any:
        """One request; the decoded JSON answer (or the raw bytes when it is not JSON)."""
        with self._open(method, path, body, query, raw, timeout) as resp:
            data = resp.read()
            if resp.headers.get_content_type() == "application/json":
                return json.loads(data or b"null")
            return data

    def stream(self, path: str, query: dict[str, Any] | None = None) -> Iterator[bytes]:
        """The lines of a streaming answer (server-sent events or JSON lines), as they come."""
        with self._open("GET", path, None, query, None, None) as resp:
            for line in resp:
                yield line.rstrip(b"\r\n")

    def _open(self, method: str, path: str, body: Any, query: dict[str, Any] | None, raw: bytes | None,
              timeout: float | None) -> Any:
        url = self.url + request_target(path, query)
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        headers = {"Authorization": f"Bearer {self.token}"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(url, method=method, data=data, headers=headers)
        try:
            return _OPENER.open(req, timeout=timeout or self.timeout)
        except urllib.error.HTTPError as exc:
            if 300 <= exc.code < 400:  # refused by _NoRedirect: say where it wanted to go
                raise ApiError(exc.code, f"{method} {path}: {exc.code} {exc.msg}") from None
            text = exc.read().decode(errors="replace")
            try:
                parsed = json.loads(text)
                message = parsed.get("error", text) if isinstance(parsed, dict) else text
            except ValueError:
                parsed, message = None, text
            raise ApiError(exc.code, f"{method} {path}: {exc.code} {message}", parsed) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ApiError(0, f"cannot reach the hub at {self.url}: {reason} (set HUB_URL, or run "
                              f"./scripts/run which writes .hub/dev.env)") from None

    def get_or_none(self, path: str) -> Any:
        try:
            return self.call("GET", path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
