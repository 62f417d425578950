# finding: 5 (the same structure stored in a slot survived restarts)
# expect: timeout too_large method_error
def attack(self):
    value = [1]
    for i in range(40):
        value = [value, value]
    self.dag = value
    self._p_changed = True
    return 1
