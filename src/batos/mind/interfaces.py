"""Contracts of the mind's services, stated in prose."""

from zope.interface import Attribute, Interface


class ICycleService(Interface):
    """Cognitive cycles as the kernel sees them.

    Cycles run one at a time in a thread of the service's own; a failure inside one fails that
    cycle (FAILED, with the reason) and never the service. Waiting for a cycle holds no thread.
    The ``op_*`` coroutines serve the wire ops of the same names and need no language model.
    """

    runner = Attribute("the CycleRunner: the durable state machine")
    wait_seconds = Attribute("how long a client may wait for one cycle before it is told to look later")

    def start():
        """Start the cycle thread and resume cycles a crash interrupted."""

    def enqueue(cycle_id):
        """Have the cycle thread drive ``cycle_id`` (again); harmless for a finished cycle."""

    def missing_method(receiver, selector, args, kwargs, intent, examples, wait, may_start, on_state):
        """Coroutine: start or join the cycle that writes ``selector`` for ``receiver``; with
        ``wait``, await its end (COMPLETE, FAILED or AWAITING_APPROVAL), sending each state to
        ``on_state``; return its summary. ``may_start`` may refuse a new cycle by raising."""

    def op_cycles_list(fields, context=None):
        """Coroutine: every cycle's summary, oldest first (only unfinished ones unless ``all``)."""

    def op_cycle_show(fields, context=None):
        """Coroutine: one cycle with its brief and attempts; not_found if there is none."""

    def op_cycle_decide(fields, context=None):
        """Coroutine: approve (install the source whose digest was shown) or reject a cycle that
        awaits approval."""

    def op_cycles_prune(fields, context=None):
        """Coroutine: forget finished cycles older than ``days``; the methods they wrote stay."""

    def close():
        """Stop the thread after the cycle it is running; close the runner's connection."""


class IMindService(Interface):
    """The personas as the kernel sees them: asking, routing, conversations.

    Each ``op_*`` coroutine serves the wire op of the same name. Bad input (an empty or oversized
    question, an unknown persona or conversation) is refused before anything is written.
    """

    def op_ask(fields, context):
        """Coroutine: route ``question``, then the lead's turn and its partner's (and ALFRED's when
        they repeat or drift), each a Synaptic Cycle, streamed to ``context.emit`` as ``{"text",
        "persona"}`` events; ``{"conversation", "route", "turns", "seconds"}``. A lead that cannot
        answer is ``synthesis_failed``; the turns so far stay in the conversation."""

    def op_route(fields, context):
        """Coroutine: ``{"archetype", "lead", "partners", "scores", "decided_by", "depth"}``; the
        model is asked only when the embeddings leave two archetypes tied."""

    def op_route_teach(fields, context):
        """Coroutine: add one labelled exemplar to the router's data in the image."""

    def op_personas(fields, context):
        """Coroutine: each persona's codex, its facets (compiled or not) and what it is bound to."""

    def op_conversations_list(fields, context):
        """Coroutine: every conversation's summary, oldest first."""

    def op_conversation_show(fields, context):
        """Coroutine: one conversation with its exchanges and turns; not_found if there is none."""

    def op_conversations_prune(fields, context):
        """Coroutine: forget conversations unchanged for ``days``."""
