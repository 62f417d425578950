# finding: 2 (an expert's Blob consumes any file: read, move, delete)
# expect: method_error
def attack(self):
    experts = self.llm.lora_repository
    for name in experts:
        blob = experts[name].model_blob
        blob.consumeFile('@SECRET@')
        return blob.open('r').read()
    return experts.keys()
