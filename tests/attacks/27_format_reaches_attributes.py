# finding: root cause of 1 and 2 (str.format reaching attributes)
# expect: guardian_rejected
def attack(self):
    return '{0.llm.model_bundles}'.format(self)
