"""Contracts of the kernel's services, stated in prose."""

from zope.interface import Attribute, Interface


class IModelService(Interface):
    """The language model and its files as clients reach them.

    Blocking work (imports, loading, generation) runs off the event loop; while it runs, the
    model's state and progress reach the calling client as events. A generation never runs inside
    a transaction. The ``op_*`` coroutines serve the wire ops of the same names.
    """

    core = Attribute("the CognitiveCore")

    def infer(args, kwargs, context):
        """Coroutine: one generation (``infer_``); its text. Arguments are checked first:
        one prompt string, and only the documented keywords with values of the right type."""

    def op_upload(fields, context):
        """Coroutine: append a chunk to an upload; its size so far."""

    def op_model_import(fields, context):
        """Coroutine: import a model from an upload (or, explicitly, a hub id)."""

    def op_model_list(fields, context):
        """Coroutine: the models the image holds and the active one."""

    def op_model_use(fields, context):
        """Coroutine: make a model active and load it."""

    def op_expert_import(fields, context):
        """Coroutine: import the LoRA adapter(s) of an upload."""
