"""What every ``trigger-hub`` command shares: the hub's address and token, the output mode, and
the global options (``--json``, ``--url``, ``--token``) that may come before the subcommand or
after it (``trigger-hub logs NAME --json``, as the README shows)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

from hub.cli.client import Client


class Ctx:
    """What every command shares: the hub's address and token, and the output mode.

    The client is made on first use, so the global options may still be changed by the ones a
    subcommand was given (``trigger-hub logs NAME --json``: ``_global_options``)."""

    def __init__(self, url: str | None, token: str | None, as_json: bool) -> None:
        self.url = url
        self.token = token
        self.as_json = as_json
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.url, self.token)
        return self._client

    def out(self, data: Any, human: Callable[[], None]) -> None:
        if self.as_json:
            click.echo(json.dumps(data, indent=2, default=str))
        else:
            human()


class _PathSegment(click.ParamType):
    """A name that becomes one segment of an API path: ``/``, ``?`` and ``#`` would change which
    URL is asked for (``a?b`` would read function ``a``), so they are refused here; everything else
    is the hub's to judge (it answers "bad name ..." for a space)."""

    name = "name"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        bad = sorted({ch for ch in text if ch in "/?#"})
        if bad or not text:
            self.fail(f"bad name {text[:80]!r}: use letters, digits, '_', '-', '.' (e.g. resize-images)", param, ctx)
        return text


SEGMENT = _PathSegment()


def _set_global(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """A global option given after the subcommand: it wins over the one before it (the last
    one given, as a shell reader expects)."""
    if value is None or value is False:
        return
    c = ctx.find_object(Ctx)
    if c is None:  # --help or a parse error before the group ran
        return
    if param.name == "as_json":
        c.as_json = True
    elif param.name == "url":
        c.url, c._client = str(value), None
    elif param.name == "token":
        c.token, c._client = str(value), None


def _global_options() -> list[click.Parameter]:
    """``--json``, ``--url`` and ``--token`` for every subcommand, so they may come after it too
    (``trigger-hub logs NAME --json``) as well as before it (``trigger-hub --json logs NAME``).
    No envvar here: HUB_URL and HUB_API_TOKEN are read once, by the group."""
    return [
        click.Option(["--json", "as_json"], is_flag=True, expose_value=False, is_eager=True,
                     callback=_set_global, help="machine-readable output"),
        click.Option(["--url"], expose_value=False, callback=_set_global,
                     help="the hub (default: HUB_URL or .hub/dev.env)"),
        click.Option(["--token"], expose_value=False, callback=_set_global,
                     help="the admin API token (HUB_API_TOKEN)"),
    ]


class HubCommand(click.Command):
    """A subcommand that also takes the global options."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.extend(_global_options())


class HubGroup(click.Group):
    """A group whose commands and subgroups take the global options (the top group has its own)."""

    command_class = HubCommand

    def __init__(self, *args: Any, globals_here: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if globals_here:
            self.params.extend(_global_options())


HubGroup.group_class = HubGroup
