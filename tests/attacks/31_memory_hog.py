# finding: 5 (allocating more memory than the machine has)
# expect: method_error
def attack(self):
    return len(bytearray(64 * 1024 * 1024 * 1024))
