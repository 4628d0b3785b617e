"""The seccomp filter every worker runs under: kernel surfaces a function never needs, denied.

Namespaces, dropped capabilities and a nameless uid already stop most of what the calls below
could do; the filter removes the calls themselves, so a kernel bug behind one of them is out of a
hostile function's reach (io_uring, BPF and user-faultfd are where recent local privilege
escalations came from; ``keyctl`` and ``userfaultfd`` even work unprivileged on this kernel).
A denied call fails with ``EPERM``, exactly as a missing privilege would: the function sees an
ordinary ``OSError``, nothing is killed and the hub is unaffected.

The program is compiled once per pool with libseccomp (Debian's ``libseccomp2``, loaded through
``ctypes``: no compiled extension in the hub, and the system call numbers come from the library,
not from a table of ours) and handed to bubblewrap as ``--seccomp FD``; bwrap installs it (with
``no_new_privs``) right before it executes the worker. Calls of another architecture's ABI (the
32-bit ``int 0x80`` entry, x32) do not match the native architecture the filter was built for and
kill the process: that is libseccomp's default, and no Python function needs them.

In ``process`` isolation the same program is installed in the forked child before ``exec``
(:func:`preexec_installer`). The worker-side runtime never touches any of this: it stays
standard-library only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from functools import lru_cache
from typing import Callable

# The issue's list, plus calls that only ever serve to reach into other processes' memory or
# to open files by handle (a known container escape with CAP_DAC_READ_SEARCH).
DENIED_SYSCALLS: tuple[str, ...] = (
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "bpf",
    "keyctl", "add_key", "request_key",
    "userfaultfd",
    "perf_event_open",
    "ptrace", "process_vm_readv", "process_vm_writev",
    "mount", "umount2", "pivot_root", "move_mount", "open_tree", "fsopen", "fsmount", "fsconfig",
    "fspick", "mount_setattr",
    "kexec_load", "kexec_file_load",
    "init_module", "finit_module", "delete_module",
    "open_by_handle_at",
)

_SCMP_ACT_ALLOW = 0x7FFF0000
_SCMP_ACT_ERRNO = 0x00050000


class SeccompUnavailable(RuntimeError):
    """libseccomp cannot be loaded or refused the program: no worker may start without it."""


def _lib() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as exc:
        raise SeccompUnavailable(
            f"libseccomp cannot be loaded ({exc}); install it (Debian: apt-get install libseccomp2)"
        ) from None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add.restype = ctypes.c_int
    lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
    lib.seccomp_export_bpf.restype = ctypes.c_int
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


@lru_cache(maxsize=1)
def program() -> bytes:
    """The compiled classic-BPF program (an array of 8-byte ``sock_filter``), built once."""
    lib = _lib()
    ctx = lib.seccomp_init(_SCMP_ACT_ALLOW)
    if not ctx:
        raise SeccompUnavailable("seccomp_init failed")
    try:
        for name in DENIED_SYSCALLS:
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr < 0:  # unknown to this architecture or library version: nothing to deny
                continue
            rc = lib.seccomp_rule_add(ctx, _SCMP_ACT_ERRNO | errno.EPERM, nr, 0)
            if rc < 0:
                raise SeccompUnavailable(f"seccomp_rule_add({name}) failed: {os.strerror(-rc)}")
        fd = os.memfd_create("seccomp-export", os.MFD_CLOEXEC)
        try:
            rc = lib.seccomp_export_bpf(ctx, fd)
            if rc < 0:
                raise SeccompUnavailable(f"seccomp_export_bpf failed: {os.strerror(-rc)}")
            size = os.lseek(fd, 0, os.SEEK_END)
            os.lseek(fd, 0, os.SEEK_SET)
            data = b""
            while len(data) < size:
                chunk = os.read(fd, size - len(data))
                if not chunk:
                    break
                data += chunk
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)
    if not data or len(data) % 8:
        raise SeccompUnavailable(f"libseccomp exported a malformed program ({len(data)} bytes)")
    return data


def program_fd() -> int:
    """A fresh memfd holding the program, for one ``bwrap --seccomp FD`` (bwrap reads it to the
    end, so every worker needs its own file offset: one memfd each)."""
    data = program()
    fd = os.memfd_create("bwrap-seccomp", os.MFD_CLOEXEC)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2


def preexec_installer() -> Callable[[], None]:
    """For a plain-process worker: a function to run in the forked child before ``exec`` that
    installs the program. Everything is allocated here, in the parent: the child only calls."""
    data = program()
    buf = ctypes.create_string_buffer(data, len(data))
    prog = _SockFprog(len(data) // 8, ctypes.cast(buf, ctypes.c_void_p))
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.restype = ctypes.c_int
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    keep = (buf, prog)  # alive as long as the closure

    def install() -> None:
        if prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        if prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(keep[1]), 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")

    return install
