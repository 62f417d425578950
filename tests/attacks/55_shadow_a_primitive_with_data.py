# finding: contain-2 #9 (pLLM_obj's describe/oid could be shadowed with data)
# expect: protected
def attack(self):
    self.describe = 'nothing to see'
    self.oid = '0x1'
    self._p_changed = True
    return 1
