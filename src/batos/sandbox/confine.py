"""What a sandbox worker does to itself before it runs any method (Linux).

:func:`confine` is applied once, by the worker's zygote, in this order (minijail's), each step
reported by name, each missing one reported with the reason:

- ``rlimits``: address space, open files, file size 0 (no file can be written), no core dumps, a
  bound on processes, a CPU-time ceiling for each process's whole life;
- ``netns``: a network namespace of its own with no interfaces (directly as root, or inside a new
  user namespace otherwise);
- ``capabilities``: the bounding and ambient sets emptied and every capability given up, with the
  securebits that would give them back locked;
- ``uid``: an unprivileged uid and gid of its own (``SANDBOX_UID``) with no supplementary groups,
  so no same-uid rule of the kernel reaches the UVM (only when the UVM runs as root; otherwise
  the worker keeps the UVM's uid and the seccomp filter alone keeps it off other processes);
- ``not_dumpable``: no core, no ptrace or /proc access by processes of its uid;
- ``no_new_privs``: nothing it could execute gains privileges;
- ``landlock``: no file system access at all, no TCP bind or connect, no signals or abstract
  sockets outside itself (as much of that as the kernel's Landlock ABI offers);
- ``seccomp``: an **allow-list** of what a confined interpreter needs (reading and writing its
  pipes, memory without PROT_EXEC, futexes, signals' own bookkeeping, clocks, random bytes,
  process limits of itself only, forking without new namespaces, waiting for its children);
  every other system call fails with EPERM.

Each call then runs in a child forked from the zygote, which first applies :func:`seal_call`: a
second filter layer that takes away forking, waiting and new pipes, so a call can start nothing.
The worker has imported everything it needs before this runs; afterwards it cannot open a file.
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
NEW_NAMESPACES = CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET
PROT_EXEC = 0x4
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_SECUREBITS = 28
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
# NOROOT, its lock, the lock on NO_SETUID_FIXUP (left off, so setuid drops every capability),
# the lock on KEEP_CAPS (left off), NO_CAP_AMBIENT_RAISE and its lock.
LOCKED_SECUREBITS = 0b1110_1011
LINUX_CAPABILITY_VERSION_3 = 0x20080522
SANDBOX_UID = 65534  # nobody; a uid no file of the UVM's belongs to
PROCESSES = 4096  # a bound, not the barrier: a call cannot fork at all (seal_call)
SYS_LANDLOCK_CREATE_RULESET = 444
SYS_LANDLOCK_RESTRICT_SELF = 446
LANDLOCK_CREATE_RULESET_VERSION = 1
# Every file-system right up to ABI 5 (execute ... ioctl_dev); higher ABIs add none for files.
FS_RIGHTS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1, 5: (1 << 16) - 1}
NET_BIND_AND_CONNECT_TCP = 0b11
SCOPE_ABSTRACT_UNIX_AND_SIGNAL = 0b11

SECCOMP_SET_MODE_FILTER = 1
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_ERRNO = 0x00050000
SCMP_CMP_EQ = 4
SCMP_CMP_MASKED_EQ = 7
ALLOWED_SYSCALLS = (
    "read", "write", "readv", "writev", "pread64", "close", "lseek", "munmap", "mremap", "brk", "madvise",
    "futex", "set_robust_list", "rseq", "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack",
    "exit", "exit_group", "getpid", "gettid", "getuid", "geteuid", "getgid", "getegid", "getrandom",
    "clock_gettime", "clock_getres", "gettimeofday", "nanosleep", "clock_nanosleep", "sched_yield",
    "getrlimit", "wait4", "pipe2", "seccomp",
)
# (syscall, argument index, comparison, a, b): allowed only when the argument compares so.
CONDITIONAL_SYSCALLS = (
    ("mmap", 2, SCMP_CMP_MASKED_EQ, PROT_EXEC, 0),
    ("mprotect", 2, SCMP_CMP_MASKED_EQ, PROT_EXEC, 0),
    ("prlimit64", 0, SCMP_CMP_EQ, 0, 0),  # its own limits only
    ("clone", 0, SCMP_CMP_MASKED_EQ, NEW_NAMESPACES, 0),  # the zygote's fork; never a namespace
    ("prctl", 0, SCMP_CMP_EQ, PR_SET_NO_NEW_PRIVS, 0),  # libseccomp sets it when a call seals itself
)
# glibc falls back from clone3 to clone only when clone3 is said not to exist.
NOT_IMPLEMENTED = ("clone3",)
TAKEN_FROM_A_CALL = ("clone", "clone3", "fork", "vfork", "wait4", "pipe2", "pipe", "prctl", "seccomp")


class RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class ArgumentComparison(ctypes.Structure):  # libseccomp's struct scmp_arg_cmp
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


class CapabilityHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class CapabilityData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


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
    resource.setrlimit(resource.RLIMIT_NPROC, (PROCESSES, PROCESSES))


def leave_the_network(libc: ctypes.CDLL) -> str | None:
    if libc.unshare(CLONE_NEWNET) == 0 or libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0:
        return None
    return _fail("unshare")


def give_up_capabilities(libc: ctypes.CDLL) -> str | None:
    """Empty the bounding and ambient sets and every capability set of this process."""
    if os.geteuid() == 0 and libc.prctl(PR_SET_SECUREBITS, LOCKED_SECUREBITS, 0, 0, 0) != 0:
        return _fail("locking the securebits")
    for capability in range(64):
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0 and ctypes.get_errno() != errno.EINVAL:
            return _fail(f"dropping capability {capability} from the bounding set")
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)  # EINVAL on kernels without ambient sets
    # root keeps CAP_SETUID until the uid step, whose setresuid clears every set
    return None if os.geteuid() == 0 else clear_capability_sets(libc)


def clear_capability_sets(libc: ctypes.CDLL) -> str | None:
    header = CapabilityHeader(LINUX_CAPABILITY_VERSION_3, 0)
    data = (CapabilityData * 2)()
    return None if libc.capset(ctypes.byref(header), data) == 0 else _fail("capset")


def become_unprivileged(libc: ctypes.CDLL, uid: int) -> str | None:
    if os.geteuid() != 0:
        return "the UVM does not run as root: workers keep its uid, and seccomp alone keeps them off its process"
    try:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    except OSError as exc:
        return f"setresuid: {exc.strerror}"
    return clear_capability_sets(libc)


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
    """libseccomp with its signatures, loaded while files can still be opened; None where it is
    not installed."""
    for name in ("libseccomp.so.2", None):
        if name is None:
            # Only where the usual soname is missing: ctypes.util brings subprocess and shutil with
            # their extension modules, and every library mapped in a zygote makes each fork dearer.
            from ctypes.util import find_library
            name = find_library("seccomp")
        if name:
            try:
                lib = ctypes.CDLL(name, use_errno=True)
            except OSError:
                continue
            lib.seccomp_init.restype = ctypes.c_void_p
            lib.seccomp_init.argtypes = [ctypes.c_uint32]
            lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
            lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
            lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                                   ctypes.POINTER(ArgumentComparison)]
            lib.seccomp_load.argtypes = [ctypes.c_void_p]
            lib.seccomp_release.argtypes = [ctypes.c_void_p]
            return lib
    return None


def _build(lib: ctypes.CDLL | None, default: int, rules: list[tuple[int, str, tuple | None]]) -> tuple[Any, str | None]:
    """(a libseccomp filter context, None) or (None, why not): ``default`` for every call not in
    ``rules`` (action, name, condition). The caller releases the context."""
    if lib is None:
        return None, "libseccomp is not installed"
    context = lib.seccomp_init(default)
    if not context:
        return None, "seccomp_init failed"
    for action, syscall, condition in rules:
        number = lib.seccomp_syscall_resolve_name(syscall.encode())
        if number < 0:
            continue  # not a system call on this architecture
        if condition is None:
            added = lib.seccomp_rule_add(context, action, number, 0)
        else:
            argument, op, a, b = condition
            added = lib.seccomp_rule_add_array(context, action, number, 1,
                                               (ArgumentComparison * 1)(ArgumentComparison(argument, op, a, b)))
        if added != 0:
            lib.seccomp_release(context)
            return None, f"seccomp_rule_add({syscall}) failed"
    return context, None


def _filter(lib: ctypes.CDLL | None, default: int, rules: list[tuple[int, str, tuple | None]]) -> str | None:
    """Load a seccomp filter built by :func:`_build`; None, or why it was not loaded."""
    context, problem = _build(lib, default, rules)
    if context is None:
        return problem
    try:
        return None if lib.seccomp_load(context) == 0 else "seccomp_load failed"
    finally:
        lib.seccomp_release(context)


def seccomp(lib: ctypes.CDLL | None) -> str | None:
    """The zygote's allow-list (see the module docstring)."""
    rules = [(SCMP_ACT_ALLOW, name, None) for name in ALLOWED_SYSCALLS]
    rules += [(SCMP_ACT_ALLOW, name, (argument, op, a, b)) for name, argument, op, a, b in CONDITIONAL_SYSCALLS]
    rules += [(SCMP_ACT_ERRNO | errno.ENOSYS, name, None) for name in NOT_IMPLEMENTED]
    return _filter(lib, SCMP_ACT_ERRNO | errno.EPERM, rules)


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class CallSeal:
    """The layer a call's own process adds: no forking, waiting, pipes or further filters.

    Built once, by the zygote, into a BPF program; each call's child loads it with one system
    call (building it there cost each call half a millisecond)."""

    def __init__(self, lib: ctypes.CDLL | None):
        self.problem: str | None = None
        self.program = b""
        self._libc = _libc()
        context, self.problem = _build(lib, SCMP_ACT_ALLOW,
                                       [(SCMP_ACT_ERRNO | errno.EPERM, name, None) for name in TAKEN_FROM_A_CALL])
        if context is None:
            return
        try:
            read_end, write_end = os.pipe()
            try:
                lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
                exported = lib.seccomp_export_bpf(context, write_end)
                os.close(write_end)
                write_end = -1
                self.program = os.read(read_end, 1 << 16)
            finally:
                os.close(read_end)
                if write_end >= 0:
                    os.close(write_end)
            if exported != 0 or not self.program or len(self.program) % 8:
                self.problem, self.program = "seccomp_export_bpf failed", b""
            self.syscall = lib.seccomp_syscall_resolve_name(b"seccomp")
        finally:
            lib.seccomp_release(context)
        self._buffer = ctypes.create_string_buffer(self.program, len(self.program))
        self._fprog = SockFprog(len(self.program) // 8, ctypes.addressof(self._buffer))
        # Typed once here: ctypes converting untyped arguments in each child cost it about 70
        # copied pages, a third of a millisecond.
        self._seccomp = self._libc.syscall
        self._seccomp.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_long, ctypes.c_void_p]
        self._seccomp.restype = ctypes.c_long
        self._fprog_address = ctypes.addressof(self._fprog)

    def apply(self) -> str | None:
        """Load the program into this process (no_new_privs is already set); None, or why not."""
        if self.problem:
            return self.problem
        if self._seccomp(self.syscall, SECCOMP_SET_MODE_FILTER, 0, self._fprog_address) != 0:
            return _fail("seccomp(SECCOMP_SET_MODE_FILTER)")
        return None


def seal_call(lib: ctypes.CDLL | None) -> str | None:
    """Apply :class:`CallSeal` to this process at once."""
    return CallSeal(lib).apply()


def confine(memory_bytes: int, cpu_seconds: int, open_files: int, uid: int = SANDBOX_UID,
            lib: ctypes.CDLL | None = None) -> tuple[list[str], list[str]]:
    """Apply every measure in the module docstring; (applied, what could not be and why).
    ``lib`` is libseccomp, loaded by the caller when it also needs it later (:func:`seal_call`)."""
    applied, missing = [], []
    libc = _libc()
    libseccomp = lib or load_libseccomp()
    limit_resources(memory_bytes, cpu_seconds, open_files)
    applied.append("rlimits")
    for name, step in (("netns", lambda: leave_the_network(libc)),
                       ("capabilities", lambda: give_up_capabilities(libc)),
                       ("uid", lambda: become_unprivileged(libc, uid)),
                       ("not_dumpable", lambda: None if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0 else _fail("prctl")),
                       ("no_new_privs", lambda: None if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 else _fail("prctl")),
                       ("landlock", lambda: landlock(libc)),
                       ("seccomp", lambda: seccomp(libseccomp))):
        try:
            problem = step()
        except (OSError, AttributeError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
        (missing.append(f"{name}: {problem}") if problem else applied.append(name))
    return applied, missing
