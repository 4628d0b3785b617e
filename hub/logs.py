"""structlog set-up: JSON lines in production, console in dev, for our lines and the libraries'.

Invocation context (invocation_id, function, trigger, and the trace's ids when traced) is set in
one ``ContextVar`` (:data:`INVOCATION`, by ``hub.delivery.dispatch``) and merged into every line
logged while the invocation is handled, ours and the libraries'. (structlog's
``bound_contextvars`` did the same with a ContextVar per key and a generator context manager:
~3.6 us per invocation, 1-3 % of the hub behind function URLs; one ``set``/``reset`` is ~0.3 us.)
Lines bound with structlog's own contextvars are merged too.

aiokafka, pymongo and aiohttp log through the standard library. Everything goes through one
stdlib handler whose ``structlog.stdlib.ProcessorFormatter`` renders both our event dicts and
their records (via ``foreign_pre_chain``), so a log reader sees one format with the same keys
(timestamp, level, logger, event) whatever wrote the line.
"""

from __future__ import annotations

import logging
import sys
import time
from contextvars import ContextVar
from typing import IO, Any

import structlog

# Libraries whose INFO lines are chatter for a service operator; WARNING and above still show.
LIBRARIES = ("aiokafka", "kafka", "pymongo", "aiohttp", "asyncio", "botocore", "urllib3")
REPEAT_WINDOW_S = 60.0
_MARK = "_trigger_hub_handler"  # set on our handler, so configure() can replace it

# aiokafka reports a member its group no longer knows (a trigger stopped, a session timed out,
# a rebalance) from its heartbeat and its commit paths, at warning and at error, once per
# heartbeat: 144 lines when a few triggers stop. One warning per window says the same.
_MEMBERSHIP_MARKERS = (
    "UnknownMemberId", "member_id was not recognized", "IllegalGeneration", "will rejoin",
    "generation id is not", "CommitFailedError", "rebalanced and may have assigned",
)


class LibraryNoise(logging.Filter):
    """Tames the libraries' repeated lines (never ours): aiokafka's group-membership errors become
    one warning, and a line repeated within ``window_s`` is dropped, the next one saying how many
    were (``suppressed``)."""

    def __init__(self, window_s: float = REPEAT_WINDOW_S) -> None:
        super().__init__()
        self.window_s = window_s
        self._seen: dict[tuple[str, str, int], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not isinstance(record.msg, str):
            return True  # a structlog event dict: one of our own lines
        key = (record.name, record.msg, record.levelno)
        if record.name.startswith("aiokafka") and record.levelno >= logging.WARNING:
            text = record.getMessage()
            if any(marker in text for marker in _MEMBERSHIP_MARKERS):
                record.msg, record.args = "kafka consumer is no longer a member of its group; it rejoins if still running", None
                record.levelno, record.levelname = logging.WARNING, "WARNING"
                record.detail = text
                key = ("aiokafka", "group-membership", logging.WARNING)
        now = time.monotonic()
        last, suppressed = self._seen.get(key, (0.0, 0))
        if last and now - last < self.window_s:
            self._seen[key] = (last, suppressed + 1)
            return False
        if suppressed:
            record.suppressed = suppressed
        self._seen[key] = (now, 0)
        if len(self._seen) > 1000:  # bounded: forget the oldest half
            for old in sorted(self._seen, key=lambda k: self._seen[k][0])[:500]:
                del self._seen[old]
        return True


# The invocation being handled in this task (set and reset around it by hub.delivery.dispatch).
INVOCATION: ContextVar[dict[str, Any] | None] = ContextVar("hub_invocation", default=None)


def merge_invocation(logger: Any, method: str,
                     event_dict: structlog.typing.EventDict) -> structlog.typing.EventDict:
    """A processor: the current invocation's fields first, the line's own keys win (as structlog's
    ``merge_contextvars`` does)."""
    context = INVOCATION.get()
    if context:
        return {**context, **event_dict}
    return event_dict


# The level configure() set (NOTSET until then, as structlog logs everything unconfigured). Hot
# paths read it through enabled(): a structlog proxy's is_enabled_for binds a logger on every call
# (~0.5 us, once per invocation where it was asked).
_threshold = logging.NOTSET


def enabled(level: int) -> bool:
    """Whether a line at ``level`` (a ``logging`` level) would be logged."""
    return level >= _threshold


def _level(level: str) -> int:
    numeric = logging.getLevelName(level.upper())
    return numeric if isinstance(numeric, int) else logging.INFO


def configure(fmt: str = "console", level: str = "info", stream: IO[str] | None = None) -> None:
    """Configure structlog and the stdlib root logger (idempotent: a second call replaces the first)."""
    global _threshold
    numeric = _threshold = _level(level)
    out = stream or sys.stderr
    final: list[structlog.typing.Processor] = [structlog.stdlib.ProcessorFormatter.remove_processors_meta]
    if fmt == "json":
        final += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer(default=str)]
    else:  # ConsoleRenderer prints exceptions itself; plainly, never with local variables
        final.append(structlog.dev.ConsoleRenderer(colors=out.isatty(),
                                                   exception_formatter=structlog.dev.plain_traceback))
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        merge_invocation,
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder(allow=["detail", "suppressed"])],
        processors=final,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    handler.addFilter(LibraryNoise())
    setattr(handler, _MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
