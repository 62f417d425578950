# finding: 8 (a slot of hundreds of megabytes)
# expect: too_large method_error
def attack(self):
    self.big = 'x' * (64 * 1024 * 1024)
    self._p_changed = True
    return 1
