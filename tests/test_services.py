"""The op table, the services behind it, and the contracts they promise."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest
from zope.interface.verify import verifyClass, verifyObject

from batos.client import RemoteError
from batos.errors import NotFound
from batos.image import open_image
from batos.image.objects import oid_text
from batos.kernel import protocol
from batos.kernel.interfaces import IModelService
from batos.kernel.models import ModelService, check_infer_arguments
from batos.kernel.protocol import Request
from batos.kernel.uploads import Uploads
from batos.kernel.uvm import UVM, Settings
from batos.llm.core import ModelUnavailable
from batos.llm.generation import BackendError
from batos.mind.cycle import CyclePolicy, CycleRunner
from batos.mind.cycle_service import CycleService
from batos.mind.interfaces import ICycleService, IMindService
from batos.memory.service import MemoryService
from batos.mind.service import MindService

from conftest import EXAMPLE, ScriptedModel, make_counter, opened_root, uvm
from test_cycle import GOOD, Script, finish_event


def test_every_op_is_served_by_the_service_the_table_names():
    served_by = {"kernel": UVM, "image": UVM, "cycles": CycleService, "models": ModelService, "mind": MindService,
                 "memory": MemoryService}
    assert set(op.service for op in protocol.OPS.values()) == set(protocol.SERVICES) == set(served_by)
    for name, op in protocol.OPS.items():
        assert callable(getattr(served_by[op.service], f"op_{name}", None)), name
    assert protocol.WRITING_OPS == {name for name, op in protocol.OPS.items() if op.writes}
    assert verifyClass(IMindService, MindService)


class FakeCore:
    """A core whose listing raises what the test says (nothing else is used)."""

    def __init__(self, error: BaseException):
        self.error = error

    def list_models(self):
        raise self.error

    def add_listener(self, listener):
        pass

    def remove_listener(self, listener):
        pass


@pytest.mark.parametrize("error, code", [
    (KeyError("deep inside"), "internal"),
    (TypeError("deep inside"), "internal"),
    (ValueError("deep inside"), "internal"),
    (NotFound("no model named x"), "not_found"),
    (ModelUnavailable("still loading"), "model_unavailable"),
    (BackendError("the server said 500", transient=True), "backend_error"),
])
def test_exceptions_map_to_codes_at_the_kernel_edge(tmp_path, error, code):
    """A built-in exception from deep inside is `internal`; only BatOS's own errors carry a code."""
    uvm_ = UVM(Settings(image=str(tmp_path / "i.fs")))
    uvm_.models = ModelService(FakeCore(error), Uploads(tmp_path / "uploads"))

    async def ask() -> dict:
        uvm_._stopping = asyncio.Event()

        async def emit(event):
            pass
        return await uvm_.handle(Request("1", "model_list", {}), emit)

    reply = asyncio.run(ask())
    assert reply["ok"] is False and reply["error"]["code"] == code


@pytest.mark.parametrize("args, kwargs", [
    ((), {}), ((5,), {}), (("a", "b"), {}), (("hi",), {"temperture": 0.5}), (("hi",), {"seed": "x"}),
    (("hi",), {"max_new_tokens": 0}), (("hi",), {"stop": [1]}), (("hi",), {"max_new_tokens": True}),
])
def test_infer_arguments_are_checked_before_the_model_is_asked(args, kwargs):
    with pytest.raises(Exception) as caught:
        check_infer_arguments(args, kwargs)
    assert caught.value.code == "bad_request"
    check_infer_arguments(("hi",), {"max_new_tokens": 4, "temperature": 0.2, "seed": 1, "stop": ["\n"], "expert": None})


def test_the_services_provide_their_interfaces(tmp_path):
    img = open_image(str(tmp_path / "i.fs"))
    try:
        service = CycleService(CycleRunner(img.db, Script()))
        assert verifyObject(ICycleService, service)
        assert verifyObject(IModelService, ModelService(FakeCore(KeyError()), Uploads(tmp_path / "u")))
        service.close()
    finally:
        img.close()


def test_the_cycle_thread_survives_a_failure_while_failing_a_cycle(tmp_path, caplog):
    with opened_root(tmp_path / "i.fs") as root:
        counter = root["genesis_obj"].clone()
        counter.total = 10
        root["counter_obj"] = counter
    img = open_image(str(tmp_path / "i.fs"))
    runner = CycleRunner(img.db, Script(ValueError("a bug in a step"), GOOD, GOOD), CyclePolicy(backoff_base=0.001))
    service = CycleService(runner)
    original_fail = runner.fail
    runner.fail = lambda cycle_id, reason: (_ for _ in ()).throw(RuntimeError("the image refused"))
    runner.add_listener(lambda cycle_id, state: 1 / 0)  # a broken listener is logged, not fatal
    target = runner.read(lambda root: oid_text(root["counter_obj"]))
    try:
        with caplog.at_level(logging.ERROR):
            first = runner.start_or_join(target, "add_to_total", [5], {}, "add", [EXAMPLE])
            first_done = finish_event(runner, first)
            service.start()
            service.enqueue(first)
            assert first_done.wait(20)  # released although failing it failed
            runner.fail = original_fail
            second = runner.start_or_join(target, "other_total", [5], {}, "add", [])
            second_done = finish_event(runner, second)
            service.enqueue(second)
            assert second_done.wait(20)
        assert service._thread.is_alive()
        assert "could not be marked FAILED" in caplog.text and "a cycle listener failed" in caplog.text
    finally:
        service.close()
        img.close()


def test_cycles_can_be_listed_shown_and_pruned_without_a_model(server):
    with server.client() as c:
        assert c.call("cycles_list") == []
        with pytest.raises(RemoteError) as caught:
            c.call("cycle_show", cycle="nope")
        assert caught.value.code == "not_found"
        assert c.call("cycles_prune", days=0) == {"pruned": []}


@pytest.mark.slow
def test_clients_waiting_on_a_cycle_hold_no_thread(image_path, model_server):
    """Eight clients wait on one slow cycle; every other op that needs a thread still answers."""
    ScriptedModel.delay = 4.0
    make_counter(image_path)
    srv = uvm(image_path, model_server).start()
    results: list = []

    def wait_for_the_method():
        with srv.client(timeout=60) as c:
            results.append(c.send("counter_obj", "add_to_total", 5, examples=[EXAMPLE]))

    waiting = [threading.Thread(target=wait_for_the_method) for _ in range(8)]
    try:
        for thread in waiting:
            thread.start()
        time.sleep(1.0)
        with srv.client(timeout=10) as c:
            for call in (lambda: c.call("cycles_list"), lambda: c.call("model_list"), lambda: c.call("pack")):
                started = time.monotonic()
                call()
                assert time.monotonic() - started < 1.5
            assert any(t.is_alive() for t in waiting)  # the cycle was still running meanwhile
        for thread in waiting:
            thread.join(60)
        assert len(results) == 8 and len(set(results)) > 1  # every client got its answer
    finally:
        srv.stop()


def test_a_client_that_waits_too_long_is_told_where_to_look(image_path, model_server):
    ScriptedModel.delay = 3.0
    make_counter(image_path)
    srv = uvm(image_path, model_server, BATOS_CYCLE_WAIT_SECONDS="0.5").start()
    try:
        with srv.client(timeout=30) as c:
            with pytest.raises(RemoteError) as caught:
                c.send("counter_obj", "add_to_total", 5, examples=[EXAMPLE])
            assert caught.value.code == "timeout" and "cycles show" in caught.value.message
    finally:
        srv.stop()


def test_a_failing_event_task_is_logged_and_stops_nothing(caplog):
    from batos.tasks import spawn

    async def main() -> set:
        tasks: set = set()
        stopped = []
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: stopped.append(context))

        async def fails():
            raise ConnectionError("the client went away")
        spawn(tasks, fails(), "sending an event")
        await asyncio.sleep(0.05)
        return tasks, stopped

    with caplog.at_level(logging.ERROR):
        tasks, stopped = asyncio.run(main())
    assert tasks == set() and stopped == []
    assert "sending an event failed" in caplog.text
