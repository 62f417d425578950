# finding: review of issue 18 (a person's model choice lives on pLLM_obj: a method that set it would keep every start off the configured default)
# expect: protected
def attack(self):
    self.llm.active_model_chosen = True
    return 1
