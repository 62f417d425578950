# finding: 2 (reading a file directly)
# expect: guardian_rejected
def attack(self):
    return open('@SECRET@').read()
