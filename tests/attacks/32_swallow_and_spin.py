# finding: 5 (a loop that catches every Exception and never ends)
# expect: timeout
def attack(self):
    while True:
        try:
            while True:
                pass
        except Exception:
            pass
