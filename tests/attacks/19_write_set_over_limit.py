# finding: 8 (image growth from one message)
# expect: too_large
def attack(self):
    self.a1 = 'x' * 900000
    self.a2 = 'x' * 900000
    self.a3 = 'x' * 900000
    self.a4 = 'x' * 900000
    self.a5 = 'x' * 900000
    self.a6 = 'x' * 900000
    self.a7 = 'x' * 900000
    self.a8 = 'x' * 900000
    self.a9 = 'x' * 900000
    self.a10 = 'x' * 900000
    self._p_changed = True
    return 1
