# finding: 5 (a value 40 levels deep with shared halves pinned a worker for days)
# expect: timeout too_large method_error
def attack(self):
    value = [1]
    for i in range(40):
        value = [value, value]
    return value
