"""Kernel throughput against its floor, measured in one run (see bench/README.md).

  bare   asyncio ROUTER answering DEALER clients, no database          (in a child process)
  floor  the same, plus one ZODB FileStorage commit per message        (a)
  read   `batos run`: send of a read-only method                        (b)
  write  `batos run`: send of a writing method (one object per client)  (c)

Clients are separate processes with blocking DEALER sockets; every figure is the median of
--repeats runs. Prints messages/s and the ratios read/bare and write/floor for 1 and 8 clients.

Then the cost of the sandbox: one client sending a trivial stored method (``return 1``) and one
that reads and writes three slots, to `batos run` as it is (methods in sandbox worker processes,
a fresh forked child per call), to `batos run` of --previous-ref (the sandbox before that: workers
reused across calls) and of --baseline-ref (the last commit that ran methods in-process), each
extracted from git into a temporary folder and run by an interpreter of its own (so that its
sandbox workers run its own code too), in the same run: every server runs throughout, and each
round measures them in turn (the machine's drift weighs on all alike). --also-ref adds earlier
commits of this sandbox.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import ormsgpack
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conftest import Server, free_port  # noqa: E402

PEEK = "def peek(self):\n    return self.name\n"
BUMP = "def bump(self):\n    self.count = self.count + 1\n    self._p_changed = True\n    return self.count\n"
TRIVIAL = "def one(self):\n    return 1\n"
THREE = ("def three(self):\n    self.a = self.a + 1\n    self.b = self.b + self.a\n    self.c = [self.a, self.b]\n"
         "    self._p_changed = True\n    return self.b\n")
IN_PROCESS_REF = "8392cb5"  # the last commit whose UVM ran stored methods in its own process
REUSED_WORKERS_REF = "539b6f2"  # the last commit whose sandbox workers served many calls each
REPO = Path(__file__).resolve().parent.parent


# --- the floor server ------------------------------------------------------------------------

def floor_server(endpoint: str, image: str | None, ready) -> None:
    import transaction
    import ZODB
    from persistent.mapping import PersistentMapping
    from ZODB.FileStorage import FileStorage

    root = None
    if image:
        db = ZODB.DB(FileStorage(image))
        conn = db.open()
        root = conn.root()

    async def serve() -> None:
        ctx = zmq.asyncio.Context()
        sock = ctx.socket(zmq.ROUTER)
        sock.bind(endpoint)
        ready.set()
        while True:
            parts = await sock.recv_multipart()
            request = ormsgpack.unpackb(parts[-1])
            result = None
            if root is not None:
                key = request.get("target", "x")
                record = root.get(key)
                if record is None:
                    record = root[key] = PersistentMapping(count=0)
                record["count"] += 1
                transaction.commit()
                result = record["count"]
            await sock.send_multipart(parts[:-1] + [ormsgpack.packb({"id": request["id"], "ok": True, "result": result})])

    import zmq.asyncio
    asyncio.run(serve())


# --- clients ---------------------------------------------------------------------------------

def client_loop(endpoint: str, request: dict, count: int, start, done_queue) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    for i in range(20):  # warm up the connection
        sock.send(ormsgpack.packb({**request, "id": f"w{i}"}))
        sock.recv()
    start.wait()
    began = time.perf_counter()
    for i in range(count):
        sock.send(ormsgpack.packb({**request, "id": str(i)}))
        reply = ormsgpack.unpackb(sock.recv())
        if not reply.get("ok"):
            raise SystemExit(f"request failed: {reply}")
    done_queue.put(time.perf_counter() - began)
    sock.close()
    ctx.term()


def throughput(endpoint: str, requests: list[dict], count: int) -> float:
    """Messages per second with one client process per entry of ``requests``."""
    start = mp.Event()
    done = mp.Queue()
    procs = [mp.Process(target=client_loop, args=(endpoint, r, count, start, done)) for r in requests]
    for p in procs:
        p.start()
    time.sleep(0.5)
    began = time.perf_counter()
    start.set()
    for p in procs:
        p.join()
    elapsed = time.perf_counter() - began
    if any(p.exitcode for p in procs):
        raise SystemExit("a client failed")
    return len(requests) * count / elapsed


def run_floor(with_commit: bool, clients: int, count: int, repeats: int, workdir: Path) -> float:
    results = []
    for r in range(repeats):
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        image = str(workdir / f"floor-{clients}-{r}.fs") if with_commit else None
        ready = mp.Event()
        server = mp.Process(target=floor_server, args=(endpoint, image, ready), daemon=True)
        server.start()
        ready.wait(30)
        requests = [{"op": "x", "target": f"c{i}"} for i in range(clients)]
        results.append(throughput(endpoint, requests, count))
        server.terminate()
        server.join()
    return statistics.median(results)


def run_batos(writing: bool, clients: int, count: int, repeats: int, workdir: Path) -> float:
    results = []
    for r in range(repeats):
        srv = Server(workdir / f"batos-{writing}-{clients}-{r}.fs").start()
        targets = []
        with srv.client() as c:
            c.define("genesis_obj", PEEK)
            c.define("genesis_obj", BUMP)
            for i in range(clients):
                made = c.send("genesis_obj", "clone")
                c.set(made["$oid"], "count", 0)
                targets.append(made["$oid"])
        selector = "bump" if writing else "peek"
        requests = [{"op": "send", "target": t, "selector": selector} for t in targets]
        results.append(throughput(srv.endpoint, requests, count))
        srv.stop()
    return statistics.median(results)


def baseline_source(ref: str, workdir: Path) -> Path:
    """The ``src`` folder of commit ``ref``, extracted from git."""
    target = workdir / f"src-{ref}"
    if target.exists():
        return target / "src"
    target.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "src"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target / "src"


def interpreter_for(source_root: Path, workdir: Path) -> str:
    """A Python that imports batos from ``source_root`` and everything else from this one's
    packages; its child processes (sandbox workers, run with -I) do too."""
    venv = workdir / f"venv-{source_root.parent.name}"
    if venv.exists():
        return str(venv / "bin" / "python")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site_packages = next(venv.glob("lib/python*/site-packages"))
    (site_packages / "batos_baseline.pth").write_text(f"{source_root}\n{sysconfig.get_paths()['purelib']}\n")
    return str(venv / "bin" / "python")


def wait_until_idle(pid: int, timeout: float = 120.0) -> None:
    """Until the process has used under 5% of a core for two half-seconds running: what a UVM
    does in the background after it starts must not be measured as its answers' cost."""
    def cpu_ticks() -> int:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime

    per_second = os.sysconf("SC_CLK_TCK")
    deadline, quiet = time.monotonic() + timeout, 0
    while quiet < 2 and time.monotonic() < deadline:
        before = cpu_ticks()
        time.sleep(0.5)
        quiet = quiet + 1 if (cpu_ticks() - before) / per_second < 0.025 else 0


def run_methods(trees: dict[str, Path | None], count: int, repeats: int, workdir: Path) -> dict[str, dict[str, list[float]]]:
    """{label: {"trivial": sends/s, "three": sends/s}}, one client, one figure per round. Every
    tree's server runs for the whole measurement and each round measures them in turn, so that the
    machine's drift weighs on all of them alike; a tree None is this one."""
    servers, targets = {}, {}
    try:
        for label, root in trees.items():
            python = interpreter_for(root, workdir) if root else None
            (workdir / label).mkdir(exist_ok=True)
            srv = servers[label] = Server(workdir / label / "methods.fs", python=python).start()
            with srv.client() as c:
                c.define("genesis_obj", TRIVIAL)
                c.define("genesis_obj", THREE)
                targets[label] = c.send("genesis_obj", "clone")["$oid"]
                for slot in "abc":
                    c.set(targets[label], slot, 0)
        for srv in servers.values():
            wait_until_idle(srv.process.pid)  # the pool starting, the embedding model loading in the background
        rates: dict[str, dict[str, list[float]]] = {label: {"trivial": [], "three": []} for label in trees}
        for _ in range(repeats):
            for label, srv in servers.items():
                for name, selector in (("trivial", "one"), ("three", "three")):
                    request = {"op": "send", "target": targets[label], "selector": selector}
                    rates[label][name].append(throughput(srv.endpoint, [request], count))
        return rates
    finally:
        for srv in servers.values():
            srv.stop()


WIDE_SLOTS = 10_000
MAKE_WIDE = """
import sys
from batos.image import open_image
import transaction
image = open_image(sys.argv[1])
with transaction.manager as txn:
    root = image.db.open().root()
    wide = root["genesis_obj"].clone()
    for i in range(%d):
        setattr(wide, f"s{i:05d}", i)
    root["wide_obj"] = wide
image.close()
""" % WIDE_SLOTS


def run_sets(source_root: Path | None, count: int, repeats: int, workdir: Path, label: str) -> tuple[float, float]:
    """(sets/s, image bytes per set): one client overwriting slots of an object with WIDE_SLOTS
    slots, made by that tree's own code; medians. ``source_root`` None: this tree."""
    python = interpreter_for(source_root, workdir) if source_root else sys.executable
    rates, growth = [], []
    for r in range(repeats):
        image = workdir / f"sets-{label}-{r}.fs"
        subprocess.run([python, "-c", MAKE_WIDE, str(image)], check=True, env={**os.environ, "BATOS_LLM": "none"})
        srv = Server(image, python=python if source_root else None).start()
        wait_until_idle(srv.process.pid)
        with srv.client() as c:
            for i in range(20):
                c.set("wide_obj", f"s{i:05d}", -i)
            before = image.stat().st_size
            began = time.perf_counter()
            for i in range(count):
                c.set("wide_obj", f"s{(i * 7919) % WIDE_SLOTS:05d}", i)
            rates.append(count / (time.perf_counter() - began))
            growth.append((image.stat().st_size - before) / count)
        srv.stop()
    return statistics.median(rates), statistics.median(growth)


def thread_hop_microseconds(rounds: int = 3000) -> tuple[float, float]:
    """The cost of leaving the event loop for a thread and coming back, one request at a time:
    (stdlib executor with a no-op, WorkerPool with a no-op read job), microseconds per round trip."""
    import concurrent.futures

    from batos.image import open_image
    from batos.kernel.workers import WorkerPool

    image = open_image("memory://")
    pool = WorkerPool(image.db, size=4)
    pool.start()
    executor = concurrent.futures.ThreadPoolExecutor(4)

    async def measure() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        began = time.perf_counter()
        for _ in range(rounds):
            await loop.run_in_executor(executor, int)
        plain = (time.perf_counter() - began) / rounds * 1e6
        began = time.perf_counter()
        for _ in range(rounds):
            await pool.run(len, writes=False, timeout=10)
        return plain, (time.perf_counter() - began) / rounds * 1e6

    try:
        return asyncio.run(measure())
    finally:
        pool.stop()
        executor.shutdown()
        image.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1500, help="messages per client per run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline-ref", default=IN_PROCESS_REF, help="git commit of the in-process baseline")
    parser.add_argument("--previous-ref", default=REUSED_WORKERS_REF, help="git commit of the previous sandbox")
    parser.add_argument("--also-ref", action="append", default=[],
                        help="a further commit of the fork-per-call sandbox to measure alongside (repeatable)")
    parser.add_argument("--only-methods", action="store_true", help="measure only the sandbox and slot-table rows")
    parser.add_argument("--set-count", type=int, default=300, help="sets per run on the wide object")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="batos-bench-"))
    try:
        trees = {"in-process": baseline_source(args.baseline_ref, workdir),
                 "reused workers": baseline_source(args.previous_ref, workdir)}
        for ref in args.also_ref:
            trees[f"fork per call {ref}"] = baseline_source(ref, workdir)
        trees["fork per call"] = None
        rates = run_methods(trees, args.count, args.repeats, workdir)
        print(f"method sends, 1 client, {args.repeats} rounds; messages/s (median), and the median of each round's "
              "ratio to in-process:")
        for name, title in (("trivial", "trivial (return 1)"), ("three", "reads+writes 3 slots")):
            base = rates["in-process"][name]
            print(f"  {title}")
            for label in trees:
                rounds = [n / a for a, n in zip(base, rates[label][name])]
                print(f"    {label:>26} {statistics.median(rates[label][name]):>7.0f}/s {statistics.median(rounds):>6.2f}"
                      f"   by round: {' '.join(f'{r:.2f}' for r in rounds)}")
        sets_before = run_sets(baseline_source(args.previous_ref, workdir), args.set_count, args.repeats, workdir, "mapping")
        sets_now = run_sets(None, args.set_count, args.repeats, workdir, "tree")
        print(f"set on an object of {WIDE_SLOTS} slots, 1 client, medians of {args.repeats}:")
        print(f"{'slots kept in':>22} {'sets/s':>8} {'bytes/set':>10}")
        for name, (rate, grown) in (("PersistentMapping", sets_before), ("OOBTree", sets_now)):
            print(f"{name:>22} {rate:>8.0f} {grown:>10.0f}")
        print(f"{'tree / mapping':>22} {sets_now[0] / sets_before[0]:>8.2f} {sets_now[1] / sets_before[1]:>10.3f}")
        if args.only_methods:
            return
        rows = []
        for clients in (1, 8):
            count = args.count if clients == 1 else max(1, args.count // 4)
            bare = run_floor(False, clients, count, args.repeats, workdir)
            floor = run_floor(True, clients, count, args.repeats, workdir)
            read = run_batos(False, clients, count, args.repeats, workdir)
            write = run_batos(True, clients, count, args.repeats, workdir)
            rows.append((clients, bare, floor, read, write))
        print(f"cores: {os.cpu_count()}  repeats: {args.repeats}  medians, messages/s")
        print(f"{'clients':>7} {'bare':>8} {'floor(a)':>9} {'read(b)':>8} {'write(c)':>9} {'b/bare':>7} {'c/a':>6}")
        for clients, bare, floor, read, write in rows:
            print(f"{clients:>7} {bare:>8.0f} {floor:>9.0f} {read:>8.0f} {write:>9.0f} "
                  f"{read / bare:>7.2f} {write / floor:>6.2f}")
        plain, pool = thread_hop_microseconds()
        print(f"event loop -> thread -> event loop, one client: stdlib executor {plain:.0f} us, "
              f"worker pool with a transaction {pool:.0f} us")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
