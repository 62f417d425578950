"""Services: primitives the runtime answers outside any transaction."""

from batos.image import primitives

INFER = "infer"  # pLLM_obj infer_: one generation by the language model

primitives.register_service(INFER)
