# finding: root cause of 1 and 2 (a capability's own internals)
# expect: guardian_rejected
def attack(self):
    return self._call.worker.channel
