# finding: 7 (a method wipes the model and expert tables)
# expect: protected
def attack(self):
    self.llm.model_bundles = {}
    self.llm.lora_repository = {}
    self.llm.active_model = 'none'
    return 1
