# finding: 8 (a reply of hundreds of megabytes)
# expect: too_large method_error
def attack(self):
    return 'x' * (64 * 1024 * 1024)
