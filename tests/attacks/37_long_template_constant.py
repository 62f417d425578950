# finding: 5 (a 60 KB string constant made the Guardian's template regex backtrack for 30 s)
# expect: ok
def attack(self):
    return len('@LONG_TEMPLATE@')
