# finding: 4 (raise SystemExit shut the UVM down)
# expect: method_error
def attack(self):
    raise SystemExit(0)
