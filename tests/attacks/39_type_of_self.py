# finding: root cause of 1 and 2 (reaching the proxy's class)
# expect: guardian_rejected
def attack(self):
    return type(self).__mro__
