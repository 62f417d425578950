# finding: 5 (a 60 KB string constant made the Guardian's regex quadratic)
# expect: ok
def attack(self):
    return len('@LONG_BRACES@')
