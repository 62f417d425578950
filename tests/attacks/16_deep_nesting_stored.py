# finding: 8 (values nested beyond any reasonable depth)
# expect: too_large method_error
def attack(self):
    value = []
    for i in range(200):
        value = [value]
    self.deep = value
    self._p_changed = True
    return 1
