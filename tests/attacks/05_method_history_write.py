# finding: 6 (method history is writable, so rollback reinstalls injected source)
# expect: method_error
def attack(self):
    self.helper.history.append({'version': 1, 'source': 'def helper(self):\n    return 2\n', 'origin': 'architect'})
    return 1
