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
