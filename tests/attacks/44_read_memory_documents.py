# finding: issue 11 (a method must not walk the catalog's documents and chunks behind the kernel)
# expect: protected method_error
def attack(self):
    return [d.source for d in self.catalog.documents.values()]
