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
        "Give me a plan to build a mobile app for booking appointments.",
        "Design the data model for an online course platform.",
        "What is the fastest way to find duplicate files on a large disk?",
        "Outline the architecture for a chat service that handles many users.",
        "How do I change the oil in my car myself?",
        "My washing machine won't drain. What should I check?",
        "Walk me through replacing a broken light switch.",
        "How should I organize the code for a small game?",
        "Set up a cron job that cleans old files every night.",
        "What's an efficient way to process a huge JSON file without running out of memory?",
        "How do I make a sourdough starter from scratch?",
        "Steps to migrate a website to a new hosting provider.",
        "my wifi keeps dropping, how do i troubleshoot it",
        "Convert this shell script into a Python program.",
        "How would you structure a budget spreadsheet that tracks expenses by category?",
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
        "I'm frustrated that my code never works and I feel stupid.",
        "My dog died last week and the house feels empty.",
        "I got the promotion! I can't believe it.",
        "I keep comparing myself to others and it makes me miserable.",
        "I feel guilty for not calling my parents more often.",
        "How do I find meaning in work that feels pointless?",
        "I'm burned out and I don't know how to rest anymore.",
        "Every little thing turns into a fight with my husband lately.",
        "I'm scared of failing my final presentation tomorrow.",
        "i feel stuck in life",
        "Can you cheer me up? Nothing went right this week.",
        "Since the move I barely talk to anyone and the evenings are long.",
        "Thank you, talking to you made me feel better.",
        "I want to forgive my brother but I'm still angry.",
        "Is it normal to feel empty after finishing a big project?",
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
        "Find what my notes say about the quarterly budget.",
        "Search my documents for the meeting decisions on pricing.",
        "According to my notes, when is the contract renewal due?",
        "List everything the knowledge base has on customer complaints.",
        "Gather the facts about the French Revolution, with sources.",
        "Collect the latest findings on intermittent fasting.",
        "What do my saved articles say about remote work productivity?",
        "Who painted the Mona Lisa and when?",
        "Who wrote War and Peace, and in what year was it published?",
        "What are the main differences between stocks and bonds?",
        "Summarize what the documents I uploaded say about solar panels.",
        "Look up the capital of Mongolia.",
        "Explain what photosynthesis is.",
        "How tall is Mount Kilimanjaro?",
        "What is the tallest building in the world?",
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
        "Why are your answers so slow today?",
        "How many methods have you written so far?",
        "Show me the cycles that failed and why.",
        "Is the router sending questions to the right persona?",
        "How much memory is the image using?",
        "Should we switch you to a bigger language model?",
        "What did your last self-audit find?",
        "Are you sure that plan of yours is the simplest one?",
        "Which of your personas is used the least?",
        "Should we retrain the experts on the kept answers?",
        "Can you explain why you chose BRICK for my last question?",
        "How many model calls did that answer take?",
        "Is BatOS healthy right now?",
        "What would you cut from your own design to make it leaner?",
        "Do we need to pack the database yet?",
    ),
}


def seed_exemplars() -> list[dict[str, str]]:
    return [{"text": text, "archetype": archetype} for archetype, texts in SEED.items() for text in texts]


def install_exemplars(root) -> None:
    """Give the orchestrator the seed exemplars, unless it already has exemplars of its own (kept,
    and moved into the numbered store when an older image holds them as a list or mapping), and
    make the slot the kernel's: only ``route_teach`` (an admin's) changes it. Seed exemplars the
    image lacks are added beside its own."""
    orchestrator = root["orchestrator_obj"]
    known = orchestrator._slots.get(EXEMPLAR_SLOT)
    if not (isinstance(known, IOBTree) and len(known)):
        records = list(known.values()) if hasattr(known, "values") else list(known or ())
        orchestrator._slots[EXEMPLAR_SLOT] = IOBTree(dict(enumerate(records or seed_exemplars())))
    store = orchestrator._slots[EXEMPLAR_SLOT]
    present = {record.get("text") for record in store.values() if isinstance(record, dict)}
    for record in seed_exemplars():  # seeds added since the image was made (wave 4: 60 more)
        if record["text"] not in present:
            store[store.maxKey() + 1] = record
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


EXEMPLARS = Furnishing("router_exemplars", 4, install_exemplars)
