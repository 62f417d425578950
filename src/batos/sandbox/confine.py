"""What a sandbox worker does to itself before it runs any method (Linux; no root needed).

Applied in this order, each reported by name, each missing one reported with the reason:

- ``rlimits``: address space, open files, file size 0 (no file can be written), no core dumps,
  no new processes, a CPU-time ceiling for the worker's whole life;
- ``netns``: a network namespace of its own with no interfaces (directly, or inside a new user
  namespace when not privileged);
- ``no_new_privs``: nothing it could execute gains privileges;
- ``landlock``: no file system access at all, no TCP bind or connect, no signals or abstract
  sockets outside itself (as much of that as the kernel's Landlock ABI offers);
- ``seccomp``: system calls that start programs, processes, sockets, tracing or namespaces fail
  with EPERM (through libseccomp, when the library is present).

The worker has imported everything it needs before this runs; afterwards it cannot open a file.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import resource

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
PR_SET_NO_NEW_PRIVS = 38
SYS_LANDLOCK_CREATE_RULESET = 444
SYS_LANDLOCK_RESTRICT_SELF = 446
LANDLOCK_CREATE_RULESET_VERSION = 1
# Every file-system right up to ABI 5 (execute ... ioctl_dev); higher ABIs add none for files.
FS_RIGHTS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1, 5: (1 << 16) - 1}
NET_BIND_AND_CONNECT_TCP = 0b11
SCOPE_ABSTRACT_UNIX_AND_SIGNAL = 0b11
DENIED_SYSCALLS = (
    "execve", "execveat", "fork", "vfork", "clone", "clone3", "socket", "socketpair", "connect", "bind",
    "listen", "accept", "accept4", "ptrace", "process_vm_readv", "process_vm_writev", "mount", "umount2",
    "unshare", "setns", "chroot", "pivot_root", "bpf", "perf_event_open", "keyctl", "add_key",
    "request_key", "userfaultfd", "io_uring_setup", "kill", "tkill", "tgkill", "personality",
    "open_by_handle_at", "name_to_handle_at", "init_module", "finit_module", "delete_module",
)
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_ERRNO = 0x00050000


class RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _fail(what: str) -> str:
    return f"{what}: {os.strerror(ctypes.get_errno())}"


def limit_resources(memory_bytes: int, cpu_seconds: int, open_files: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 5))
    resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))


def leave_the_network(libc: ctypes.CDLL) -> str | None:
    if libc.unshare(CLONE_NEWNET) == 0 or libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0:
        return None
    return _fail("unshare")


def landlock(libc: ctypes.CDLL) -> str | None:
    abi = libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), LANDLOCK_CREATE_RULESET_VERSION)
    if abi < 1:
        return _fail("Landlock is not available")
    attr = RulesetAttr(FS_RIGHTS_BY_ABI[min(abi, 5)],
                       NET_BIND_AND_CONNECT_TCP if abi >= 4 else 0,
                       SCOPE_ABSTRACT_UNIX_AND_SIGNAL if abi >= 6 else 0)
    size = ctypes.sizeof(RulesetAttr) if abi >= 6 else (16 if abi >= 4 else 8)
    ruleset = libc.syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), 0)
    if ruleset < 0:
        return _fail("landlock_create_ruleset")
    try:
        if libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0) != 0:
            return _fail("landlock_restrict_self")
    finally:
        os.close(ruleset)
    return None


def load_libseccomp() -> ctypes.CDLL | None:
    """libseccomp, loaded while files can still be opened; None where it is not installed."""
    for name in ("libseccomp.so.2", ctypes.util.find_library("seccomp")):
        if name:
            try:
                return ctypes.CDLL(name, use_errno=True)
            except OSError:
                continue
    return None


def seccomp(lib: ctypes.CDLL | None) -> str | None:
    if lib is None:
        return "libseccomp is not installed"
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    context = lib.seccomp_init(SCMP_ACT_ALLOW)
    if not context:
        return "seccomp_init failed"
    try:
        for syscall in DENIED_SYSCALLS:
            number = lib.seccomp_syscall_resolve_name(syscall.encode())
            if number >= 0 and lib.seccomp_rule_add(context, SCMP_ACT_ERRNO | errno.EPERM, number, 0) != 0:
                return f"seccomp_rule_add({syscall}) failed"
        if lib.seccomp_load(context) != 0:
            return "seccomp_load failed"
    finally:
        lib.seccomp_release(context)
    return None


def confine(memory_bytes: int, cpu_seconds: int, open_files: int) -> tuple[list[str], list[str]]:
    """Apply every measure in the module docstring; (applied, what could not be and why)."""
    applied, missing = [], []
    libc = _libc()
    libseccomp = load_libseccomp()
    limit_resources(memory_bytes, cpu_seconds, open_files)
    applied.append("rlimits")
    for name, step in (("netns", lambda: leave_the_network(libc)),
                       ("no_new_privs", lambda: None if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 else _fail("prctl")),
                       ("landlock", lambda: landlock(libc)),
                       ("seccomp", lambda: seccomp(libseccomp))):
        try:
            problem = step()
        except (OSError, AttributeError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
        (missing.append(f"{name}: {problem}") if problem else applied.append(name))
    return applied, missing
