# finding: 5 (one C call holding the GIL froze every ping for 37 s)
# expect: timeout
def attack(self):
    return pow(10, 2 * 10 ** 7) % 7
