# finding: 7 (a refused kernel write is caught and the method goes on to report success)
# expect: protected
def attack(self):
    try:
        self.llm.active_model = 'evil'
        self.llm.model_bundles = {}
        return self.helper()
    except Exception:
        return 'ignored the refusal'
