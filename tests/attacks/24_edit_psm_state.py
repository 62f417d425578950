# finding: 7 (a method renames a cycle state)
# expect: protected
def attack(self):
    self.state.name = 'COMPLETE'
    return 1
