"""The model service: uploads, model and expert imports, and generations (see IModelService)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Callable, Iterator

from zope.interface import implementer

from batos.errors import BadRequest
from batos.kernel.bridge import Emit
from batos.kernel.interfaces import IModelService
from batos.kernel.protocol import Context
from batos.kernel.uploads import Uploads
from batos.llm.core import CognitiveCore
from batos.tasks import spawn

log = logging.getLogger(__name__)

# How long a model call waits for the model to be imported and loaded.
MODEL_WAIT_SECONDS = 1800.0
INFER_KEYWORDS: dict[str, tuple[type, ...]] = {
    "expert": (str, type(None)), "max_new_tokens": (int,), "system": (str, type(None)),
    "temperature": (int, float), "seed": (int, type(None)), "stop": (list, type(None)),
}


def check_infer_arguments(args: tuple, kwargs: dict) -> None:
    """BadRequest unless ``infer_`` got one prompt string and documented keywords of the right type."""
    if len(args) != 1 or not isinstance(args[0], str) or not args[0]:
        raise BadRequest("infer_ takes one argument: the prompt, a non-empty string")
    for name, value in kwargs.items():
        types = INFER_KEYWORDS.get(name)
        if types is None:
            raise BadRequest(f"infer_ takes no keyword {name!r} (it takes {', '.join(sorted(INFER_KEYWORDS))})")
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise BadRequest(f"infer_: {name} must be {' or '.join(t.__name__ for t in types)}, not {type(value).__name__}")
    if isinstance(kwargs.get("stop"), list) and not all(isinstance(s, str) for s in kwargs["stop"]):
        raise BadRequest("infer_: stop must be a list of strings")
    if kwargs.get("max_new_tokens", 1) < 1:
        raise BadRequest("infer_: max_new_tokens must be at least 1")


@implementer(IModelService)
class ModelService:
    def __init__(self, core: CognitiveCore, uploads: Uploads):
        self.core = core
        self.uploads = uploads
        self._tasks: set[asyncio.Task] = set()

    async def infer(self, args: tuple, kwargs: dict, context: Context, bound_expert: str | None = None) -> str:
        """The model's answer; its text also reaches the client piece by piece as ``{"text"}`` events.
        ``bound_expert`` applies when the call names no expert and the model has one of that name."""
        check_infer_arguments(args, kwargs)

        def generate(forward: Callable[[dict], None]):
            options = kwargs
            if bound_expert and "expert" not in kwargs:
                self.core.wait_ready(MODEL_WAIT_SECONDS)  # the experts are known once the model is loaded
                if bound_expert in self.core.expert_names():
                    options = {**kwargs, "expert": bound_expert}
            return self.core.generate(*args, timeout=MODEL_WAIT_SECONDS, stream=lambda piece: forward({"text": piece}),
                                      **options)
        with self._forwarding(context.emit) as forward:
            generation = await asyncio.to_thread(generate, forward)
        return generation.text

    async def op_upload(self, fields: dict, context: Context) -> dict:
        size = await asyncio.to_thread(self.uploads.append, fields["upload_id"], fields["offset"], fields["data"],
                                       context.request.principal)
        return {"upload_id": fields["upload_id"], "size": size}

    async def op_model_list(self, fields: dict, context: Context) -> dict:
        return await asyncio.to_thread(self.core.list_models)

    async def op_model_use(self, fields: dict, context: Context) -> dict:
        with self._forwarding(context.emit):
            return await asyncio.to_thread(self.core.use_model, fields["name"])

    async def op_expert_import(self, fields: dict, context: Context) -> dict:
        with self._consuming(fields["upload_id"], context) as path, self._forwarding(context.emit):
            return {"imported": await asyncio.to_thread(self.core.import_experts, path, fields.get("name"))}

    async def op_model_import(self, fields: dict, context: Context) -> dict:
        upload, hub = fields.get("upload_id"), fields.get("hub_id")
        if bool(upload) == bool(hub):
            raise BadRequest("model_import takes exactly one of upload_id and hub_id")
        if hub:
            with self._forwarding(context.emit):
                return await asyncio.to_thread(self.core.import_model, hub, fields.get("name"), True)
        filename = fields.get("filename")
        if filename is not None and not plain_file_name(filename):
            raise BadRequest("filename must be a file's own name: no folders, no control characters, "
                             "at most 255 characters")
        with self._consuming(upload, context) as path, self._forwarding(context.emit):
            return await asyncio.to_thread(self.core.import_model, path, fields.get("name"), False, filename)

    @contextlib.contextmanager
    def _consuming(self, upload_id: str, context: Context) -> Iterator[Any]:
        """The finished upload's path (the asker's own); the upload is gone afterwards, whatever
        happened."""
        principal = context.request.principal
        try:
            yield self.uploads.finished(upload_id, principal)
        finally:
            self.uploads.discard(upload_id, principal)

    @contextlib.contextmanager
    def _forwarding(self, emit: Emit) -> Iterator[Callable[[dict], None]]:
        """While inside, the core's state and progress reach this request's client as events; the
        function yielded sends further events from any thread, in the order it is called."""
        loop = asyncio.get_running_loop()

        def forward(event: dict) -> None:
            loop.call_soon_threadsafe(lambda: spawn(self._tasks, emit(event), "sending a model event"))

        self.core.add_listener(forward)
        try:
            yield forward
        finally:
            self.core.remove_listener(forward)


def plain_file_name(name: str) -> bool:
    """Whether ``name`` is a file's own name, fit to show: no folder part, no control characters."""
    return (0 < len(name) <= 255 and name not in (".", "..") and "/" not in name and "\\" not in name
            and name.isprintable())
