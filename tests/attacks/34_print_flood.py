# finding: 8 (printing without end)
# expect: timeout method_error
def attack(self):
    while True:
        print('x' * 10000)
