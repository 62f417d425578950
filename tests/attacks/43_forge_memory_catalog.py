# finding: issue 11 (memory is the kernel's: a method holding the catalog must not rewrite it)
# expect: protected method_error
def attack(self):
    self.catalog.version = 0
    self.catalog.next_chunk = 1
    return 1
