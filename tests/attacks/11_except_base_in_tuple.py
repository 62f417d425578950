# finding: 5 (except (BaseException, Exception) passed the Guardian and swallowed the budget)
# expect: guardian_rejected
def attack(self):
    while True:
        try:
            while True:
                pass
        except (BaseException, Exception):
            pass
