"""The Living Image: storage, objects, primitives, genesis and upkeep. Knows nothing of sockets
or prompts."""

from batos.image import traits  # noqa: F401  (registers the trait primitives)
from batos.image.genesis import Image, open_image
from batos.image.objects import Method, UvmObject
from batos.image.storage import ImageError, ImageLockedError

__all__ = ["Image", "ImageError", "ImageLockedError", "Method", "UvmObject", "open_image"]
