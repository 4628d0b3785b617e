"""Command line: ``python -m hub serve`` runs one hub instance from HUB_* settings."""

from __future__ import annotations

import asyncio
import signal

import click

from hub import logs
from hub.settings import Settings


@click.group()
def main() -> None:
    """Trigger Hub."""


@main.command()
def serve() -> None:
    """Serve the API and run every enabled trigger until SIGINT/SIGTERM."""
    settings = Settings()
    logs.configure(settings.log_format, settings.log_level)
    asyncio.run(_serve(settings))


async def _serve(settings: Settings) -> None:
    from hub.app import Hub

    hub = Hub(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, _dump_tasks)
    await hub.start()
    try:
        await stop.wait()
    finally:
        await hub.stop()


def _dump_tasks() -> None:
    """SIGUSR1: log every asyncio task with where it waits (py-spy sees threads, not tasks)."""
    import io

    import structlog

    log = structlog.get_logger("hub.cli")
    tasks = asyncio.all_tasks()
    for task in tasks:
        out = io.StringIO()
        task.print_stack(limit=12, file=out)
        log.warning("task", name=task.get_name(), stack=out.getvalue())
    log.warning("task dump done", tasks=len(tasks))


if __name__ == "__main__":
    main()
