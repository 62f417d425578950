# finding: 5 (unbounded recursion through sends)
# expect: method_error
def attack(self):
    return self.attack()
