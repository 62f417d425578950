"""A sandbox worker whose methods have got out of RestrictedPython.

The real worker (:mod:`batos.sandbox.child`): the same zygote, the same confinement, the same
frames. Only the loading of a method's code is replaced: a method runs as plain Python with the real builtins and
``os``, ``sys``, ``ctypes`` and the child module at hand, which is what an escape from
RestrictedPython gives. Tests run hostile code with it to show what the process it lands in is
worth.
"""

import ctypes
import os
import sys

from batos.sandbox import child


def unrestricted(selector, source, code):
    namespace = {"os": os, "sys": sys, "ctypes": ctypes, "child": child}
    exec(compile(source, f"<escaped {selector}>", "exec"), namespace)
    return namespace[selector]


child.load_method = unrestricted
child.main()
