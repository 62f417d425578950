# finding: issue 11 (the catalog reaches a method only as a marker: none of memory's content)
# expect: ok
def attack(self):
    found = self.catalog
    if set(found) != {'$repr'}:
        raise ValueError('the catalog reached the method with content: ' + repr(found)[:200])
    return 1
