# finding: 7 (a method replaces a primitive with data)
# expect: protected
def attack(self):
    self.traits.clone = 'gone'
    return 1
