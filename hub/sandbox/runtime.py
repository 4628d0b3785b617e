"""Worker-side runtime: runs *inside* the sandbox, one process per warm worker.

STANDARD LIBRARY ONLY, and as little of it as possible: every module imported here is paid on
every cold start. That is why this file avoids ``json`` (which drags in ``re``, ``enum`` and
friends, ~8 ms) in favour of the C accelerator ``_json`` directly, and imports ``traceback``,
``logging`` and ``asyncio`` only when a function actually needs them.

Life of a worker::

    python -I -S runtime.pyc '<config json>'
      -> a spare (hub.sandbox.prewarm) waits for {"op": "assign"}: its function's config and env
      -> apply rlimits, put the code first on sys.path (and the function's dependencies, if
         any, after the stdlib: site.addsitedir(/opt/python)), import the handler (cold start)
      -> send {"op": "ready"} or {"op": "init_error"}
      -> loop: read an invoke frame, run the handler, send one response frame

Protocol: a single socket (fd number in the config), frames of a 4-byte big-endian length and a
UTF-8 JSON document. The function's own stdout/stderr are plain pipes on fds 1/2, so nothing a
function prints can corrupt the protocol. Frames the worker sends:

- ``{"op": "ready", "init_ms": F}``
- ``{"op": "init_error", "error": {type, message, traceback}}`` then exit
- ``{"op": "result", "ok": true, "result": ..., "rss_kb": N, "cpu_s": F}``
- ``{"op": "result", "ok": false, "oom": bool, "error": {...}, "rss_kb": N, "cpu_s": F}``
- ``{"op": "exit", "code": N}`` right before a voluntary exit (``sys.exit`` in a handler)

The worker is untrusted once the handler is imported; the pool never believes anything in these
frames that matters for billing or isolation (it measures durations itself).
"""

from __future__ import annotations

import os
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:  # never true at run time: ``typing`` costs milliseconds of cold start
    from collections.abc import Callable
    from types import ModuleType, TracebackType
    from typing import Any

    Doc = dict[str, Any]

try:
    import _json

    def _make_decoder() -> Callable[[str], Any]:
        class _Ctx:
            strict = True
            object_hook = None
            object_pairs_hook = None
            parse_float = float
            parse_int = int
            memo = None

            @staticmethod
            def parse_constant(name: str) -> float:
                return {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}[name]

        scan = _json.make_scanner(_Ctx)  # type: ignore[arg-type]

        def loads(text: str) -> Any:
            obj, _end = scan(text, 0)
            return obj

        return loads

    def _not_json(obj: object) -> Any:
        raise TypeError("Object of type %s is not JSON serializable" % type(obj).__name__)

    _loads = _make_decoder()
    _encode = _json.make_encoder(
        {}, _not_json, _json.encode_basestring_ascii, None, ":", ",", False, False, False
    )

    def _dumps(obj: object) -> str:
        return "".join(_encode(obj, 0))

except ImportError:  # pragma: no cover - interpreters built without the accelerator
    import json as _jsonmod

    _loads = _jsonmod.loads

    def _dumps(obj: object) -> str:
        return _jsonmod.dumps(obj, separators=(",", ":"), allow_nan=False)


MAX_RESULT_BYTES = 6 * 1024 * 1024  # Lambda's synchronous response limit
MAX_RESULT_DEPTH = 100  # MongoDB's nesting limit: deeper results could never be stored

_fd = -1
_forked = False  # True in a child the function forked: it must never touch the protocol
_current_id = ""
_loop: Any = None
_logger: Any = None
_function_name = ""
_aws = False  # event_format "aws": a Lambda context, Lambda's environment and error documents
_loadavg_fd = -1  # hub.sandbox.runtime._last_pid
_rbuf = b""  # what a read brought beyond the frame it was for
_traced = True  # TRACEPARENT may be set: the first call without one clears what the env brought


# ---------------------------------------------------------------------------- framing


def _send_bytes(data: bytes) -> None:
    n = len(data)
    buf = n.to_bytes(4, "big") + data
    view = memoryview(buf)
    while view:
        written = os.write(_fd, view)
        view = view[written:]


def _send(doc: Doc) -> None:
    _send_bytes(_dumps(doc).encode("ascii"))


def _read_exact(n: int) -> bytes | None:
    chunks: list[bytes] = []
    while n:
        chunk = os.read(_fd, n)
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _recv() -> Any:
    """The next frame: one read() for the usual one (length and body arrive together)."""
    global _rbuf
    buf = _rbuf
    while len(buf) < 4:
        chunk = os.read(_fd, 65536)
        if not chunk:
            return None
        buf += chunk
    end = 4 + int.from_bytes(buf[:4], "big")
    rest = _read_exact(end - len(buf)) if len(buf) < end else b""
    if rest is None:
        return None
    buf, _rbuf = (buf + rest, b"") if rest else (buf, buf[end:])
    return _loads(buf[4:end].decode("utf-8"))


# ---------------------------------------------------------------------------- limits & metering


def _apply_limits(limits: Doc) -> ModuleType:
    import resource

    def setl(which: int, value: Any) -> None:
        if value is None:
            return
        soft, hard = resource.getrlimit(which)
        value = int(value)
        if hard != resource.RLIM_INFINITY and value > hard:
            value = hard
        try:
            resource.setrlimit(which, (value, value))
        except (ValueError, OSError) as exc:
            sys.stderr.write("runtime: could not set rlimit %d=%d: %s\n" % (which, value, exc))

    setl(resource.RLIMIT_CORE, 0)
    setl(resource.RLIMIT_NOFILE, limits.get("nofile"))
    setl(resource.RLIMIT_FSIZE, limits.get("fsize"))
    setl(resource.RLIMIT_NPROC, limits.get("nproc"))
    setl(resource.RLIMIT_AS, limits.get("as") or None)
    cpu = limits.get("cpu")
    if cpu:
        # Hard limit = the worker's lifetime CPU budget (the pool recycles workers that get
        # close to it); the soft limit is moved per invocation, see _arm_cpu.
        try:
            resource.setrlimit(resource.RLIMIT_CPU, (int(cpu), int(cpu)))
        except (ValueError, OSError):
            pass
    # Writes past RLIMIT_FSIZE fail with EFBIG (a clear OSError) instead of killing the worker.
    try:
        import _signal

        _signal.signal(_signal.SIGXFSZ, _signal.SIG_IGN)
    except Exception:
        pass
    return resource


def _arm_cpu(resource: ModuleType, timeout_s: float) -> None:
    """Soft RLIMIT_CPU = CPU used so far + this invocation's timeout (+1 s slack). The pool's
    wall-clock timeout normally fires first; this catches multi-threaded spinning that burns CPU
    faster than wall time. SIGXCPU then ends the worker; the pool reports it as a timeout."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
        if hard == resource.RLIM_INFINITY:
            return
        ru = resource.getrusage(resource.RUSAGE_SELF)
        want = min(int(ru.ru_utime + ru.ru_stime) + int(timeout_s) + 2, hard)
        if soft != want:  # moves once a CPU second (or when the function moved it)
            resource.setrlimit(resource.RLIMIT_CPU, (want, hard))
    except (ValueError, OSError):
        pass


def _reset_peak() -> None:
    # Linux >= 4.0: writing 5 resets VmHWM, so the peak we report is this invocation's.
    try:
        fd = os.open("/proc/self/clear_refs", os.O_WRONLY)
        try:
            os.write(fd, b"5")
        finally:
            os.close(fd)
    except OSError:
        pass


def _last_pid() -> int:
    """/proc/loadavg's 5th field: the last pid allocated *in our pid namespace* (one pread of an fd
    kept open; opened again if the function closed or reused it)."""
    global _loadavg_fd
    try:
        if _loadavg_fd < 0:
            _loadavg_fd = os.open("/proc/loadavg", os.O_RDONLY | os.O_CLOEXEC)
        return int(os.pread(_loadavg_fd, 4096, 0).split()[4])
    except (OSError, ValueError, IndexError):
        _loadavg_fd = -1
        return 0


def _stray_processes() -> int:
    """Processes the function left running (sandbox only: we are pid 2 in our own pid ns;
    asked only once the function ever started a process)."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:  # reap what already ended
            pass
    except ChildProcessError:
        pass
    me = str(os.getpid())
    try:
        return sum(1 for n in os.listdir("/proc") if n.isdigit() and n != "1" and n != me)
    except OSError:
        return 0


# ---------------------------------------------------------------------------- errors


def _clear_frames(tb: TracebackType | None) -> None:
    """Drop the locals of every frame in a traceback (frees a memory bomb's data)."""
    while tb is not None:
        try:
            tb.tb_frame.clear()
        except RuntimeError:
            pass
        tb = tb.tb_next


def _is_runtime_frame(frame: Any) -> bool:
    filename = frame.f_code.co_filename
    return filename == _RUNTIME_FILE or "/asyncio/" in filename


def _user_traceback(tb: TracebackType | None) -> TracebackType | None:
    """The traceback without the runtime's (and asyncio's) own frames."""
    kept: list[TracebackType] = []
    while tb is not None:
        if not _is_runtime_frame(tb.tb_frame):
            kept.append(tb)
        tb = tb.tb_next
    new: TracebackType | None = None
    for entry in reversed(kept):
        new = type(entry)(new, entry.tb_frame, entry.tb_lasti, entry.tb_lineno)
    return new


def _error_doc(exc: BaseException) -> Doc:
    try:
        import traceback

        text = "".join(traceback.format_exception(type(exc), exc, _user_traceback(exc.__traceback__)))
    except Exception:  # formatting can fail under memory pressure
        text = ""
    try:
        message = str(exc)
    except Exception:
        message = "<unprintable %s>" % type(exc).__name__
    doc: Doc = {"type": type(exc).__name__, "message": message, "traceback": text}
    if _aws and text:  # Lambda's stackTrace: one "  File ..., line N, in f\n    code\n" entry per frame
        import traceback

        doc["stackTrace"] = traceback.format_list(traceback.extract_tb(_user_traceback(exc.__traceback__)))
    return doc


# ---------------------------------------------------------------------------- context


class _InvocationIdFilter:
    def filter(self, record: Any) -> bool:
        record.invocation_id = _current_id
        return True


def _get_logger() -> Any:
    global _logger
    if _logger is None:
        import logging

        logger = logging.getLogger("function." + (_function_name or "handler"))
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("[%(levelname)s]\t%(asctime)s\t%(invocation_id)s\t%(message)s")
        )
        handler.addFilter(_InvocationIdFilter())
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        _logger = logger
    return _logger


class Context:
    """What a handler gets as ``context`` (Lambda-style)."""

    __slots__ = (
        "invocation_id",
        "function_name",
        "function_version",
        "trigger",
        "attempt",
        "deadline",
        "memory_limit_mb",
        "traceparent",
        "trace_id",
    )

    def __init__(self, invocation_id: str, function_name: str, function_version: str,
                 trigger: str | None, attempt: int, deadline: float,
                 memory_limit_mb: int | None) -> None:
        self.invocation_id = invocation_id
        self.function_name = function_name
        self.function_version = function_version
        self.trigger = trigger
        self.attempt = attempt
        self.deadline = deadline
        self.memory_limit_mb = memory_limit_mb
        # W3C trace context of this invocation's span (None when the hub does not trace); the
        # same value is in os.environ["TRACEPARENT"] for the length of the call
        self.traceparent = None  # type: str | None
        self.trace_id = None  # type: str | None

    @property
    def aws_request_id(self) -> str:
        return self.invocation_id

    @property
    def logger(self) -> Any:
        return _get_logger()

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.deadline - time.time()) * 1000))

    def __repr__(self) -> str:
        return "Context(invocation_id=%r, function_name=%r, function_version=%r)" % (
            self.invocation_id, self.function_name, self.function_version)


class LambdaContext(Context):
    """``event_format: "aws"``: the context Lambda's Python runtime hands a handler, same names and
    types (``memory_limit_in_mb`` is a string there too; ``identity`` has Cognito's two ids, None)."""

    __slots__ = ("invoked_function_arn", "identity", "client_context")

    def __init__(self, *args: Any) -> None:
        Context.__init__(self, *args)
        import types

        self.invoked_function_arn = ""
        self.identity = types.SimpleNamespace(cognito_identity_id=None, cognito_identity_pool_id=None)
        self.client_context = None

    memory_limit_in_mb = property(lambda self: os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", ""))
    log_group_name = property(lambda self: os.environ.get("AWS_LAMBDA_LOG_GROUP_NAME", ""))
    log_stream_name = property(lambda self: os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME", ""))


def _lambda_environment(cfg: Doc) -> None:
    """What Lambda's runtime sets and the hub cannot know before the worker starts (the code's
    path in the sandbox, a log stream per worker as Lambda's per execution environment); the rest
    comes with the function's env (hub.spec.aws_events.lambda_env)."""
    os.environ.update(LAMBDA_TASK_ROOT=cfg.get("code_dir") or os.getcwd(), _HANDLER=cfg.get("handler", ""),
                      AWS_EXECUTION_ENV="AWS_Lambda_python%d.%d" % sys.version_info[:2],
                      AWS_LAMBDA_LOG_STREAM_NAME="%s/[%s]%s" % (time.strftime("%Y/%m/%d", time.gmtime()),
                                                                cfg.get("version", ""), os.urandom(16).hex()))


# ---------------------------------------------------------------------------- main loop


def _load_handler(spec: str) -> Callable[..., Any]:
    module_name, _, attr = spec.rpartition(".")
    if not module_name or not attr:
        raise ImportError("handler must look like 'module.function', got %r" % spec)
    __import__(module_name)
    module = sys.modules[module_name]
    try:
        fn = getattr(module, attr)
    except AttributeError:
        raise AttributeError(
            "module %r has no attribute %r (handler %r)" % (module_name, attr, spec)) from None
    if not callable(fn):
        raise TypeError("handler %r is not callable" % spec)
    handler: Callable[..., Any] = fn
    return handler


_RUNTIME_FILE = _load_handler.__code__.co_filename


def _after_fork_in_child() -> None:
    global _forked, _fd
    _forked = True
    try:
        os.close(_fd)
    except OSError:
        pass
    _fd = -1


def _child_exit() -> None:
    """A forked child got back into the runtime (the handler returned/raised in it): leave."""
    _flush_std()
    os._exit(0)


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


def _line_buffered() -> None:
    """Every complete line reaches the hub's pipe when it is written, not when a buffer fills.

    stdout on a pipe is block-buffered by default, so whatever a handler printed before a
    timeout, a crash (``os._exit``, a segfault) or the hub's out-of-memory kill died with the
    process in an 8 KB buffer. Line buffering (what a terminal gets; one write per line) keeps
    every complete line: the hub drains the pipe after the worker is gone. Only a last line
    without its newline can still be lost to a kill; on normal ends the runtime flushes anyway.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        except Exception:
            pass


def _event_loop() -> Any:
    global _loop
    if _loop is None:
        import asyncio

        _loop = asyncio.new_event_loop()
        asyncio.set_event_loop(_loop)
    return _loop


def _set_trace(ctx: Context, traceparent: Any) -> None:
    """TRACEPARENT for this call only (the environment-variable carrier convention): a function's
    OpenTelemetry SDK or plain HTTP client continues the invocation's trace; the next call that is
    not traced must not inherit it."""
    global _traced
    if isinstance(traceparent, str) and traceparent.count("-") == 3:
        ctx.traceparent = traceparent
        ctx.trace_id = traceparent.split("-")[1]
        os.environ["TRACEPARENT"] = traceparent
        _traced = True
    elif _traced:
        os.environ.pop("TRACEPARENT", None)
        _traced = False


def _run(handler: Callable[..., Any], event: Any, ctx: Context) -> Any:
    result = handler(event, ctx)
    if hasattr(result, "__await__"):
        result = _event_loop().run_until_complete(result)
    return result


def _invoke(handler: Callable[..., Any], req: Doc, cfg: Doc, resource: ModuleType,
            oom_frame: Doc) -> str | Doc:
    global _current_id
    _current_id = req.get("id", "")
    ctx = (LambdaContext if _aws else Context)(
        _current_id, cfg.get("name", ""), cfg.get("version", ""), req.get("trigger"),
        req.get("attempt", 1), req.get("deadline", 0.0), cfg.get("memory_mb"))
    if _aws:
        ctx.invoked_function_arn = req.get("arn") or ""  # type: ignore[attr-defined]
    _set_trace(ctx, req.get("traceparent"))
    _reset_peak()
    _arm_cpu(resource, cfg.get("timeout_s", 30))
    try:
        try:
            result = _run(handler, req.get("event"), ctx)
        except MemoryError as exc:
            _clear_frames(exc.__traceback__)
            err = _error_doc(exc)
            err["message"] = "memory limit of %s MB exceeded%s" % (
                cfg.get("memory_mb"), (": " + err["message"]) if err["message"] else "")
            return {"op": "result", "ok": False, "oom": True, "error": err}
        except SystemExit as exc:
            code = exc.code
            if code is None:
                code = 0
            elif not isinstance(code, int):
                try:
                    sys.stderr.write(str(code) + "\n")
                except Exception:
                    pass
                code = 1
            _flush_std()
            if _forked:
                os._exit(code & 0xFF)
            try:
                _send({"op": "exit", "code": code, "seq": req.get("seq")})
            finally:
                os._exit(code & 0xFF)
        except BaseException as exc:
            if _forked:
                _child_exit()
            return {"op": "result", "ok": False, "oom": False, "error": _error_doc(exc)}
        if _forked:
            _child_exit()
        try:
            payload = _dumps(result)
        except RecursionError:
            return _too_deep()
        except (TypeError, ValueError) as exc:
            return {"op": "result", "ok": False, "oom": False, "error": {
                "type": "TypeError",
                "message": "result is not JSON serializable: %s" % exc,
                "traceback": "",
            }}
        if (payload.count("[") + payload.count("{") > MAX_RESULT_DEPTH
                and _nesting_exceeds(result, MAX_RESULT_DEPTH)):
            return _too_deep()
        if len(payload) > MAX_RESULT_BYTES:
            return {"op": "result", "ok": False, "oom": False, "error": {
                "type": "ResultTooLarge",
                "message": "result is %d bytes; the limit is %d" % (len(payload), MAX_RESULT_BYTES),
                "traceback": "",
            }}
        return payload
    except MemoryError:
        return oom_frame


def _too_deep() -> Doc:
    return {"op": "result", "ok": False, "oom": False, "error": {"type": "ResultTooDeep", "traceback": "",
            "message": "result nested too deeply: more than %d levels of lists/objects" % MAX_RESULT_DEPTH}}


def _nesting_exceeds(obj: Any, limit: int) -> bool:
    """True if ``obj`` has more than ``limit`` levels of lists/dicts (iterative: no recursion)."""
    stack = [(obj, 1)]
    while stack:
        cur, depth = stack.pop()
        if isinstance(cur, dict):
            items: Any = cur.values()
        elif isinstance(cur, (list, tuple)):
            items = cur
        else:
            continue
        if depth > limit:
            return True
        for item in items:
            if isinstance(item, (dict, list, tuple)):
                stack.append((item, depth + 1))
    return False


def _meter(resource: ModuleType, children: bool) -> tuple[int, float]:
    """Peak RSS in kB since _reset_peak and CPU seconds so far, from one getrusage: its ru_maxrss
    is the counter /proc/self/status shows as VmHWM (which the reset sets back), read without
    the kernel formatting the whole status file. With ``children``, the largest ended child's."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    peak = ru.ru_maxrss
    if children:  # (a process the function started and that ended)
        try:
            peak = max(peak, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
        except OSError:
            pass
    return peak, float(ru.ru_utime + ru.ru_stime)


def _await_function(cfg: Doc) -> Doc:
    """A spare (hub.sandbox.prewarm) waits here for its one function: its configuration and
    environment (secrets too) arrive now, its code was just put in place; none ran here before."""
    msg = _recv()
    if not isinstance(msg, dict) or msg.get("op") != "assign" or not isinstance(msg.get("config"), dict):
        os._exit(0)  # no longer wanted (the hub closed the socket), or out of turn
    os.environ.update(msg.get("env") or {})  # a superset of the neutral environment it started with
    time.tzset()
    return dict(msg["config"], fd=cfg.get("fd"), pidns=cfg.get("pidns"))


def main(argv: list[str] | None = None) -> None:
    global _fd, _function_name, _aws
    argv = sys.argv if argv is None else argv
    cfg = _loads(argv[1])
    _fd = int(cfg["fd"])
    os.set_inheritable(_fd, False)  # the function's own subprocesses never see the protocol
    # Nothing else leaks in (bwrap leaves e.g. its --userns fd open).
    os.closerange(3, _fd)
    os.closerange(_fd + 1, 65536)
    os.register_at_fork(after_in_child=_after_fork_in_child)
    cfg = _await_function(cfg) if cfg.get("spare") else cfg
    _function_name = cfg.get("name", "")
    if cfg.get("event_format") == "aws":
        _aws = True
        _lambda_environment(cfg)
    _line_buffered()
    resource = _apply_limits(cfg.get("limits") or {})
    oom_frame = {"op": "result", "ok": False, "oom": True, "error": {
        "type": "MemoryError", "message": "memory limit of %s MB exceeded" % cfg.get("memory_mb"),
        "traceback": ""}}
    if cfg.get("net_gate"):
        # The hub wires this namespace's network up from outside while the interpreter starts;
        # no code of the function (nor a .pth file of its dependencies) runs before it is done.
        gate = _recv()
        if not isinstance(gate, dict) or gate.get("op") != "network" or gate.get("ok") is not True:
            os._exit(0)
    code_dir = cfg.get("code_dir") or os.getcwd()
    sys.path.insert(0, code_dir)
    sys.argv = [cfg.get("handler", "")]
    t0 = time.perf_counter()
    try:
        deps_dir = cfg.get("deps_dir")
        if deps_dir:
            # After the code (and the standard library); addsitedir so .pth files work. Only
            # here: a function without dependencies never pays for importing site.
            import site

            site.addsitedir(deps_dir)
        handler = _load_handler(cfg["handler"])
        if getattr(getattr(handler, "__code__", None), "co_flags", 0) & 0x80:  # CO_COROUTINE
            _event_loop()  # asyncio's import belongs to the cold start, not the first invocation
    except BaseException as exc:
        if isinstance(exc, MemoryError):
            _clear_frames(exc.__traceback__)
        err = _error_doc(exc)
        if isinstance(exc, ImportError) and not os.access(code_dir, os.R_OK | os.X_OK):
            err["message"] += (
                " (the code directory %s is not readable by the sandbox user uid %d: "
                "code must be world-readable, 0755 directories and 0644 files)"
                % (code_dir, os.getuid()))
        _flush_std()
        _send({"op": "init_error", "error": err, "oom": isinstance(exc, MemoryError)})
        os._exit(0)
    _flush_std()
    pidns = bool(cfg.get("pidns"))
    baseline = _last_pid() if pidns else 0
    _send({"op": "ready", "init_ms": (time.perf_counter() - t0) * 1000.0})
    while True:
        req = _recv()
        if req is None:
            os._exit(0)
        seq = req.get("seq") if isinstance(req, dict) else None
        oom_frame["seq"] = seq
        out = _invoke(handler, req, cfg, resource, oom_frame)
        if _forked:
            _child_exit()
        _flush_std()
        # one small read says whether the function ever started a process (in our pid ns)
        spawned = not pidns or _last_pid() > baseline
        try:
            rss_kb, cpu_s = _meter(resource, spawned)
        except Exception:
            rss_kb, cpu_s = 0, 0.0
        strays = _stray_processes() if pidns and spawned else 0
        try:
            if isinstance(out, str):
                _send_bytes(('{"op":"result","ok":true,"seq":%d,"rss_kb":%d,"cpu_s":%.4f,"strays":%d,'
                             '"result":%s}' % (seq or 0, rss_kb, cpu_s, strays, out)).encode("ascii"))
            else:
                out["seq"] = seq
                out["rss_kb"] = rss_kb
                out["cpu_s"] = cpu_s
                out["strays"] = strays
                _send(out)
        except MemoryError:
            oom_frame["rss_kb"] = rss_kb
            _send(oom_frame)
        del out  # a big result must not stay alive while the worker idles


if __name__ == "__main__":
    main()
