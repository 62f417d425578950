# finding: 4 (raise KeyboardInterrupt shut the UVM down)
# expect: method_error
def attack(self):
    raise KeyboardInterrupt()
