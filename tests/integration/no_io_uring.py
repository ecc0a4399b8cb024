"""Runs a command where io_uring is refused, as Docker's default seccomp profile (and
`kernel.io_uring_disabled`) refuse it: a seccomp filter makes io_uring_setup, io_uring_enter
and io_uring_register fail with EPERM, then the command is executed in this process. With
`--small-rings-only`, only rings of more than 16 entries are refused, as RLIMIT_MEMLOCK
refuses large rings before Linux 5.12: a probe's small ring works, a server's does not.

    python no_io_uring.py [--small-rings-only] COMMAND [ARG...]
"""

import ctypes
import os
import struct
import sys

# The io_uring system calls are 425-427 on every Linux architecture (the unified table).
FIRST, LAST = 425, 427
EPERM = 1
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2


def insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


SMALL_RING = 16


def refuse_io_uring(small_rings_only: bool) -> None:
    if small_rings_only:
        program = b"".join([
            insn(0x20, 0, 0, 0),             # A = seccomp_data.nr
            insn(0x15, 0, 3, FIRST),         # A == io_uring_setup ? next : allow
            insn(0x20, 0, 0, 16),            # A = low half of args[0], the entries
            insn(0x25, 0, 1, SMALL_RING),    # A > 16 ? refuse : allow
            insn(0x06, 0, 0, SECCOMP_RET_ERRNO | EPERM),
            insn(0x06, 0, 0, SECCOMP_RET_ALLOW),
        ])
    else:
        program = b"".join([
            insn(0x20, 0, 0, 0),             # A = seccomp_data.nr
            insn(0x35, 0, 2, FIRST),         # A >= 425 ? next : allow
            insn(0x25, 1, 0, LAST),          # A > 427 ? allow : next
            insn(0x06, 0, 0, SECCOMP_RET_ERRNO | EPERM),
            insn(0x06, 0, 0, SECCOMP_RET_ALLOW),
        ])
    filters = ctypes.create_string_buffer(program, len(program))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = SockFprog(len(program) // 8, ctypes.addressof(filters))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, None, 0, 0) != 0:
        sys.exit(f"no_io_uring: PR_SET_NO_NEW_PRIVS: {os.strerror(ctypes.get_errno())}")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        sys.exit(f"no_io_uring: PR_SET_SECCOMP: {os.strerror(ctypes.get_errno())}")


if __name__ == "__main__":
    args = sys.argv[1:]
    small = args[:1] == ["--small-rings-only"]
    if small:
        args = args[1:]
    refuse_io_uring(small)
    os.execv(args[0], args)
