"""Kernel throughput against its floor, measured in one run (see bench/README.md).

  bare   asyncio ROUTER answering DEALER clients, no database          (in a child process)
  floor  the same, plus one ZODB FileStorage commit per message        (a)
  read   `batos run`: send of a read-only method                        (b)
  write  `batos run`: send of a writing method (one object per client)  (c)

Clients are separate processes with blocking DEALER sockets; every figure is the median of
--repeats runs. Prints messages/s and the ratios read/bare and write/floor for 1 and 8 clients.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import ormsgpack
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conftest import Server, free_port  # noqa: E402

PEEK = "def peek(self):\n    return self.name\n"
BUMP = "def bump(self):\n    self.count = self.count + 1\n    self._p_changed = True\n    return self.count\n"


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
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="batos-bench-"))
    try:
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
