"""Genesis, migrations, and opening an image ready for use."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import transaction
import ZODB
from BTrees.OOBTree import OOBTree
from zope.interface import implementer

from batos.image import primitives
from batos.image.blobs import ensure_model_slots
from batos.image.interfaces import IImage
from batos.image.objects import PARENT_SLOT, Method, UvmObject
from batos.image.protection import PLLM_KERNEL_SLOTS, mark_kernel
from batos.image.storage import ImageError, normalize_uri, open_database
from batos.image.transactions import run_in_transaction

log = logging.getLogger(__name__)

SCHEMA_KEY = "batos_schema"
FURNISHED_KEY = "batos_furnished"  # {furnishing name: version installed}
SCHEMA_VERSION = 7
PSM_STATES = ("IDLE", "DECOMPOSING", "DELEGATING", "SYNTHESIZING", "VALIDATING", "AWAITING_APPROVAL",
              "COMPLETE", "FAILED")

PERSONAS = ("brick", "robin", "babs", "alfred")
PLAIN_ROOT_OBJECTS = (
    "pLLM_obj", "memory_manager_obj", "knowledge_catalog_obj", "psm_prototypes_obj",
    "orchestrator_obj", *(f"{p}_prototype_obj" for p in PERSONAS),
)
TRAIT_PRIMITIVES = primitives.TRAIT_PRIMITIVES

Migration = Callable[[dict], None]


def give_pllm_its_repositories(root) -> None:
    """Schema 2: pLLM_obj holds model bundles, LoRA adapters, the active model's name, and infer_."""
    pllm = root["pLLM_obj"]
    ensure_model_slots(pllm)
    if "infer_" not in pllm._slots:
        pllm._slots["infer_"] = Method("infer_", origin="primitive", primitive="infer")


def give_psm_its_states(root) -> None:
    """Schema 3: the cognitive cycle's states, as prototypes in psm_prototypes_obj."""
    psm = root["psm_prototypes_obj"]
    for state in PSM_STATES:
        if state not in psm._slots:
            psm._slots[state] = UvmObject(parents=[root["traits_obj"]], name=state,
                                          finished=state in ("COMPLETE", "FAILED"))


def give_traits_every_primitive(root) -> None:
    """Schema 4: traits_obj holds every trait primitive (oid and slot_names were added)."""
    traits = root["traits_obj"]
    for selector, primitive in TRAIT_PRIMITIVES.items():
        if selector not in traits._slots:
            traits._slots[selector] = Method(selector, origin="primitive", primitive=primitive)


def protect_kernel_objects(root) -> None:
    """Schema 5: kernel objects are marked, so only the kernel changes them (batos.image.protection)."""
    mark_kernel(root["traits_obj"], (PARENT_SLOT, *TRAIT_PRIMITIVES))
    mark_kernel(root["pLLM_obj"], PLLM_KERNEL_SLOTS)
    psm = root["psm_prototypes_obj"]
    mark_kernel(psm)
    for state in PSM_STATES:
        mark_kernel(psm._slots[state])
    for cycle in root["active_cycles"].values():
        mark_kernel(cycle)


def protect_expert_records(root) -> None:
    """Schema 6: the records in pLLM_obj's expert table are kernel objects too (a method given one,
    or a client naming its oid, could rewrite its digest and size)."""
    for record in root["pLLM_obj"]._slots["lora_repository"].values():
        if isinstance(record, UvmObject):
            mark_kernel(record)


def protect_model_choice(root) -> None:
    """Schema 7: whether a person chose the active model is the kernel's to record (a client that
    could set it would keep an image off the configured shipped model)."""
    mark_kernel(root["pLLM_obj"], PLLM_KERNEL_SLOTS)


# MIGRATIONS[n] turns a schema-n root into a schema-(n+1) root, in one transaction.
MIGRATIONS: dict[int, Migration] = {1: give_pllm_its_repositories, 2: give_psm_its_states, 3: give_traits_every_primitive,
                                    4: protect_kernel_objects, 5: protect_expert_records, 6: protect_model_choice}


@dataclass(frozen=True)
class Furnishing:
    """Objects a layer above the image keeps in it (the mind's persona codex, say).

    ``install(root)`` brings them to ``version``: it runs at genesis and on every image that holds
    an older version (or none), in the transaction that prepares the image, so it must keep what
    a user changed and be safe to run on an image it has furnished before.
    """

    name: str
    version: int
    install: Callable[[Any], None]


def furnish(root, furnishings: Sequence[Furnishing]) -> list[str]:
    """Install each furnishing ``root`` lacks at its version; the names installed (caller commits)."""
    if FURNISHED_KEY not in root:
        root[FURNISHED_KEY] = OOBTree()
    installed = root[FURNISHED_KEY]
    done = []
    for item in furnishings:
        if installed.get(item.name, 0) < item.version:
            item.install(root)
            installed[item.name] = item.version
            done.append(item.name)
    return done


class SchemaTooNewError(ImageError):
    """The image was written by a newer BatOS."""


def genesis(root) -> None:
    """Create the primordial objects in ``root`` (the caller commits)."""
    traits = UvmObject(name="traits", description="Behaviour every object inherits.")
    root["traits_obj"] = traits
    give_traits_every_primitive(root)
    root["genesis_obj"] = UvmObject(
        parents=[traits], name="genesis",
        description="The first object: clone it to make new ones.",
    )
    for key in PLAIN_ROOT_OBJECTS:
        root[key] = UvmObject(parents=[traits], name=key.removesuffix("_obj"))
    root["active_cycles"] = OOBTree()
    give_pllm_its_repositories(root)
    give_psm_its_states(root)
    protect_kernel_objects(root)
    root[SCHEMA_KEY] = SCHEMA_VERSION


def migrate(root) -> list[int]:
    """Bring ``root`` to SCHEMA_VERSION; return the versions migrated from (caller commits)."""
    version = root[SCHEMA_KEY]
    if not isinstance(version, int):
        raise ImageError(f"the image's schema version {version!r} is not a number")
    if version > SCHEMA_VERSION:
        raise SchemaTooNewError(
            f"the image has schema version {version}, newer than this BatOS understands "
            f"({SCHEMA_VERSION}); upgrade BatOS to open it (nothing was changed)"
        )
    done = []
    while version < SCHEMA_VERSION:
        step = MIGRATIONS.get(version)
        if step is None:
            raise ImageError(f"no migration from schema version {version}")
        step(root)
        done.append(version)
        version += 1
        root[SCHEMA_KEY] = version
    return done


@implementer(IImage)
class Image:
    """An opened Living Image (see IImage)."""

    def __init__(self, db: ZODB.DB, uri: str):
        self.db = db
        self.uri = uri

    def close(self) -> None:
        self.db.close()


def prepare(db: ZODB.DB, furnishings: Sequence[Furnishing] = ()) -> str:
    """Run genesis or migrations as needed, then ``furnishings``, in one committed transaction:
    what was done."""
    manager = transaction.TransactionManager(explicit=True)
    conn = db.open(transaction_manager=manager)

    def prepare_root() -> str:
        root = conn.root()
        if SCHEMA_KEY not in root:
            genesis(root)
            outcome = "genesis"
        else:
            migrated = migrate(root)
            outcome = f"migrated from {migrated}" if migrated else "resumed"
        furnished = furnish(root, furnishings)
        return outcome + (f", furnished {', '.join(furnished)}" if furnished else "")
    try:
        return run_in_transaction(manager, prepare_root)
    finally:
        conn.close()


def open_image(uri: str | None = None, furnishings: Sequence[Furnishing] = (), **db_kw) -> Image:
    """Open (creating if needed) the image at ``uri`` and make it ready for use, with ``furnishings``
    installed."""
    target = normalize_uri(uri)
    db = open_database(target.uri, **db_kw)
    try:
        outcome = prepare(db, furnishings)
    except BaseException:
        db.close()
        raise
    log.info("image %s: %s", target.file_path or target.uri, outcome)
    return Image(db, target.uri)
