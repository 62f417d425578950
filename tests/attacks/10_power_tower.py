# finding: 5 (10**10**8 froze the server for minutes and ignored SIGTERM)
# expect: timeout
def attack(self):
    return 10 ** 10 ** 8 % 7
