"""Contracts of the language-model layer, stated in prose."""

from zope.interface import Attribute, Interface


class IBackend(Interface):
    """Something that turns chat messages into text.

    ``generate`` blocks the calling thread (callers run it off the event loop) and never touches
    the image: no transaction may be open across it. Calls on one backend are served one at a
    time; ``waiting`` counts the callers queued behind the one running. A failure raises
    BackendError whose ``transient`` flag says whether the same call may succeed if retried
    (time-outs, connection errors, 5xx) or not (bad request, unknown expert).
    """

    name = Attribute("a short description of the loaded model")
    waiting = Attribute("number of calls queued behind the one running")

    engine = Attribute("what computes: 'llama.cpp', 'transformers' or 'openai'")

    def generate(messages, expert=None, max_new_tokens=256, stop=None, temperature=0.0, seed=None, samples=1,
                 stream=None, prose=False):
        """Return a Generation: the text plus token counts and timings. With ``samples`` > 1 and a
        temperature above 0, that many answers are sampled in one batched call: the first is the
        text, the others are ``alternatives``. ``stream``, if given, is called with pieces of the
        (first) text as they are generated; joined, they are the text. With ``prose``, the engine's
        own repetition controls apply (an answer to a person, not code)."""

    def generate_many(conversations, expert=None, max_new_tokens=256, stop=None, temperature=0.0, seed=None,
                      prose=False):
        """One Generation per conversation, in order, each as ``generate`` would have answered it
        alone (greedy answers of the bare model are the same text; under an expert they may differ
        by rounding); independent prompts are generated together where the engine can."""

    def stats():
        """Plain data describing the backend: model, devices, experts and their tiers."""

    def close():
        """Release the model and everything it holds."""
