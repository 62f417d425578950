# finding: 5 (naming a BaseException subclass in except)
# expect: guardian_rejected
def attack(self):
    try:
        return 1
    except (ValueError, SystemExit):
        return 2
