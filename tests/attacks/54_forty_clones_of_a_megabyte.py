# finding: contain-2 #7 (clones were not counted in the per-message write limit: +42 MB from one message)
# expect: too_large
def attack(self):
    self.big = 'x' * 1000000
    made = []
    for i in range(40):
        made.append(self.clone())
    self.made = made
    self._p_changed = True
    return len(made)
