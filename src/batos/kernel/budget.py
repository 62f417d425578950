"""Time budgets for methods stored in the image.

A method's frames are recognised by the file name their code was compiled under; only those frames
are traced, so kernel and library code run at full speed. When the budget is spent the next line
executed in a method frame raises MethodTimeout, a BaseException, so that ``except Exception`` in
a method cannot swallow it. Code stuck inside one C call is not interrupted here; the worker pool's
own timeout covers that case.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable

from batos.image.objects import METHOD_FILENAME_PREFIX


class MethodTimeout(BaseException):
    def __init__(self, seconds: float):
        self.seconds = seconds
        super().__init__(f"the method ran past its time budget of {seconds:g} s")


def call_with_budget(fn: Callable[..., Any], seconds: float, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn(*args, **kwargs)``, raising MethodTimeout once method code has run ``seconds``."""
    deadline = time.monotonic() + seconds

    def trace_line(frame, event, arg):
        if time.monotonic() > deadline:
            raise MethodTimeout(seconds)
        return trace_line

    def trace_call(frame, event, arg):
        if frame.f_code.co_filename.startswith(METHOD_FILENAME_PREFIX):
            return trace_line(frame, event, arg)
        return None

    previous = sys.gettrace()
    sys.settrace(trace_call)
    try:
        return fn(*args, **kwargs)
    finally:
        sys.settrace(previous)
