# finding: 5 (default arguments ran at compile time, outside any budget)
# expect: guardian_rejected
def attack(self, x=pow(10, 10 ** 7)):
    return x
