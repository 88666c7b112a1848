"""Seccomp filters for the sandbox's steps: no sockets at all, and for the judged program no processes.

- No step opens a socket (`socket` fails with EPERM; so does `io_uring_setup`, whose rings can open
  sockets past the filter): that is the sandbox's network isolation, and it costs nothing, where a
  network namespace per step cost about 5 ms to create and more to tear down under load.
- The run step may start threads, never processes. No koan needs a child process, and a program that
  can start one can run its own binary again (to retry a test until a random answer happens to pass,
  or to list its tests) and can leave daemons behind. So `fork`, `vfork` and a `clone` without
  CLONE_THREAD fail with EPERM; `clone3`, whose flags a filter cannot read, fails with ENOSYS, which
  makes glibc start threads with `clone` instead.

Written as classic BPF by hand (bubblewrap's `--seccomp` takes the compiled program), for x86_64 and
aarch64; elsewhere there is no filter, `available()` says so, and the sandbox falls back to a network
namespace per step.
"""

from __future__ import annotations

import functools
import os
import platform
import struct

# BPF opcodes
_LD_W_ABS, _JEQ_K, _JGE_K, _JSET_K, _RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
_ALLOW, _KILL, _ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
_EPERM, _ENOSYS = 1, 38
_CLONE_THREAD = 0x00010000
_X32_BIT = 0x40000000

# arch: (AUDIT_ARCH value, {syscall: number})
_ARCHES = {
    "x86_64": (0xC000003E, {"socket": 41, "clone": 56, "fork": 57, "vfork": 58, "clone3": 435, "io_uring_setup": 425}),
    "aarch64": (0xC00000B7, {"socket": 198, "clone": 220, "clone3": 435, "io_uring_setup": 425}),
}


def available() -> bool:
    return platform.machine() in _ARCHES


@functools.cache
def program(processes: bool) -> bytes:
    """The compiled filter (struct sock_filter[]) for this machine: no sockets, and no processes unless asked."""
    audit_arch, nr = _ARCHES[platform.machine()]
    # The checks, then the four returns; a jump names its return, and its offset is counted from there.
    body: list[tuple[int, int | str, int | str, int]] = [
        (_LD_W_ABS, 0, 0, 4),  # seccomp_data.arch
        (_JEQ_K, 0, "kill", audit_arch),
        (_LD_W_ABS, 0, 0, 0),  # seccomp_data.nr
    ]
    if platform.machine() == "x86_64":
        body.append((_JGE_K, "eperm", 0, _X32_BIT))  # the x32 ABI's numbers alias every syscall
    body += [(_JEQ_K, "eperm", 0, nr["socket"]), (_JEQ_K, "eperm", 0, nr["io_uring_setup"])]
    if not processes:
        body += [(_JEQ_K, "eperm", 0, nr[name]) for name in ("fork", "vfork") if name in nr]
        body += [
            (_JEQ_K, "enosys", 0, nr["clone3"]),
            (_JEQ_K, 0, "allow", nr["clone"]),
            (_LD_W_ABS, 0, 0, 16),  # seccomp_data.args[0], low 32 bits: clone's flags
            (_JSET_K, "allow", "eperm", _CLONE_THREAD),
        ]
    returns = {"allow": _ALLOW, "eperm": _ERRNO | _EPERM, "enosys": _ERRNO | _ENOSYS, "kill": _KILL}
    order = ["allow", "eperm", "enosys", "kill"]
    prog = []
    for i, (code, jt, jf, k) in enumerate(body):
        def offset(target, i=i):
            return target if isinstance(target, int) else len(body) - i - 1 + order.index(target)
        prog.append((code, offset(jt), offset(jf), k))
    prog += [(_RET_K, 0, 0, returns[name]) for name in order]
    return b"".join(struct.pack("=HBBI", *x) for x in prog)


def pipe_with(compiled: bytes) -> int:
    """A readable fd holding a compiled filter (for `bwrap --seccomp FD`); the caller closes it."""
    r, w = os.pipe()
    try:
        os.write(w, compiled)
    finally:
        os.close(w)
    return r
