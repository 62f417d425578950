# finding: root cause of 1 and 2 (interpreter internals through a generator)
# expect: guardian_rejected
def attack(self):
    frames = (x for x in [1])
    return frames.gi_frame.f_globals
