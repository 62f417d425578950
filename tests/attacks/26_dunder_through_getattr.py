# finding: root cause of 1 and 2 (private attributes by a computed name)
# expect: guardian_rejected method_error
def attack(self):
    name = '_' + '_class_' + '_'
    return getattr(self, name)
