"""A sandbox worker whose methods have got out of RestrictedPython.

The real worker (:mod:`batos.sandbox.child`): the same zygote, the same confinement, the same
frames. Only the loading of a method's code is replaced: a method runs as plain Python with the real builtins and
``os``, ``sys``, ``ctypes`` and the child module at hand, which is what an escape from
RestrictedPython gives. Tests run hostile code with it to show what the process it lands in is
worth.
"""

import builtins
import ctypes
import marshal
import os
import sys

from batos.sandbox import child
from batos.sandbox.restricted import restricted_globals


def unrestricted(selector, source, code):
    """The method with nothing guarded: its source compiled plainly, or (when RestrictedPython
    compiled it in the UVM) its code run with the guards' hooks made plain."""
    if code is None:
        namespace = {"os": os, "sys": sys, "ctypes": ctypes, "child": child}
        exec(compile(source, f"<escaped {selector}>", "exec"), namespace)
        return namespace[selector]
    namespace = {**restricted_globals((child.ObjectProxy,)), "__builtins__": builtins.__dict__, "_getattr_": getattr, "_write_": lambda obj: obj,
                 "os": os, "sys": sys, "ctypes": ctypes, "child": child}
    exec(marshal.loads(code), namespace)
    return namespace[selector]


child.load_method = unrestricted
child.main()
