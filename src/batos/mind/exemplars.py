"""The router's first exemplars: a few labelled questions per archetype, put in the image once.

They live in ``orchestrator_obj.router_exemplars`` as plain ``{"text", "archetype"}`` records,
numbered in a BTree so that teaching one writes one bucket, not every exemplar known;
``batos route --teach ARCHETYPE QUESTION`` adds more at run time. (The labelled set the router is
measured on, ``bench/router_queries.jsonl``, is a different one.)
"""

from __future__ import annotations

from BTrees.IOBTree import IOBTree

from batos.image.genesis import Furnishing
from batos.image.protection import ALL, mark_kernel, protected_slots
from batos.mind.router import Exemplar

EXEMPLAR_SLOT = "router_exemplars"

SEED: dict[str, tuple[str, ...]] = {
    "technical": (
        "How do I fix this error in my code?",
        "My program throws an exception when the input file is empty.",
        "How do I install and configure a web server?",
        "Write a function that sorts a list of dictionaries by a key.",
        "Why is my database query so slow and how can I optimize it?",
        "How do I repair a leaking kitchen faucet?",
        "What is the best way to design the classes for an inventory app?",
        "My unit tests pass locally but fail in CI.",
        "How do I build a command line tool in Python?",
        "The app freezes when I click the save button. How do I debug it?",
        "How do I connect to an API and handle its errors?",
        "Steps to set up a home network with two routers?",
    ),
    "emotional": (
        "I feel sad and alone tonight.",
        "I'm so stressed about my exams that I can't focus.",
        "How do I stop worrying about what others think of me?",
        "I'm afraid I made the wrong decision.",
        "My friend hurt my feelings and I don't know what to say.",
        "I need some motivation to keep going.",
        "I feel happy today and I want to share it.",
        "I'm nervous about meeting new people.",
        "I lost my job and I feel worthless.",
        "How can I be more patient with my kids?",
        "I'm grieving and everything feels heavy.",
        "I feel like nobody understands me.",
    ),
    "factual": (
        "What is the distance from the Earth to the Sun?",
        "Who discovered penicillin?",
        "What is the population of Canada?",
        "When did World War II end?",
        "What is the difference between an atom and a molecule?",
        "Which country has the largest area?",
        "What is the boiling point of ethanol?",
        "Compare the sizes of Jupiter and Saturn.",
        "What does HTTP stand for?",
        "Find the year the Eiffel Tower was built.",
        "How many continents are there?",
        "Who was the first president of the United States?",
    ),
    "system": (
        "How is the system performing?",
        "Should we change how you write methods?",
        "Why did that cycle fail?",
        "Are you using too many model calls?",
        "Audit yourself for mistakes.",
        "Is this the simplest way to do it?",
        "What is BatOS doing right now?",
        "Should we add a new facet to one of your personas?",
        "How big is your image and what is in it?",
        "Do you think we should trust this plan?",
        "What should the system improve next?",
        "Which persona should handle this, and why?",
    ),
}


def seed_exemplars() -> list[dict[str, str]]:
    return [{"text": text, "archetype": archetype} for archetype, texts in SEED.items() for text in texts]


def install_exemplars(root) -> None:
    """Give the orchestrator the seed exemplars, unless it already has exemplars of its own (kept,
    and moved into the numbered store when an older image holds them as a list or mapping), and
    make the slot the kernel's: only ``route_teach`` (an admin's) changes it."""
    orchestrator = root["orchestrator_obj"]
    known = orchestrator._slots.get(EXEMPLAR_SLOT)
    if not (isinstance(known, IOBTree) and len(known)):
        records = list(known.values()) if hasattr(known, "values") else list(known or ())
        orchestrator._slots[EXEMPLAR_SLOT] = IOBTree(dict(enumerate(records or seed_exemplars())))
    marked = protected_slots(orchestrator)
    if marked != ALL and EXEMPLAR_SLOT not in marked:
        mark_kernel(orchestrator, (*marked, EXEMPLAR_SLOT))


def add_exemplar(root, text: str, archetype: str, limit: int) -> int | None:
    """Number and keep one exemplar; how many there are now, or None when ``limit`` are kept."""
    store = root["orchestrator_obj"]._slots.get(EXEMPLAR_SLOT)
    if not isinstance(store, IOBTree):
        install_exemplars(root)
        store = root["orchestrator_obj"]._slots[EXEMPLAR_SLOT]
    count = len(store)
    if count >= limit:
        return None
    store[store.maxKey() + 1 if count else 0] = {"text": text, "archetype": archetype}
    return count + 1


def exemplars_of(root) -> list[Exemplar]:
    """The exemplars in the image; records that are not well formed are skipped."""
    found = []
    store = root["orchestrator_obj"]._slots.get(EXEMPLAR_SLOT)
    records = store.values() if isinstance(store, IOBTree) else (store or ())
    for record in records:
        if isinstance(record, dict) and isinstance(record.get("text"), str) and isinstance(record.get("archetype"), str):
            found.append(Exemplar(record["text"], record["archetype"]))
    return found


EXEMPLARS = Furnishing("router_exemplars", 3, install_exemplars)
