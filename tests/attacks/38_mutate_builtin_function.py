# finding: root cause of 1 and 2 (writing to a builtin)
# expect: method_error
def attack(self):
    sorted.cache = 1
    return 1
