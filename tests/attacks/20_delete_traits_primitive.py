# finding: 7 (a method deletes traits_obj's primitives)
# expect: protected
def attack(self):
    del self.traits.describe
    return 1
