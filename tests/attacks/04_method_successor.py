# finding: 6 (a method mints an unaudited successor of a Method)
# expect: method_error
def attack(self):
    helper = self.helper
    installed = helper.successor("def helper(self):\n    return open('@SECRET@').read()\n")
    self.helper = installed
    self._p_changed = True
    return 1
