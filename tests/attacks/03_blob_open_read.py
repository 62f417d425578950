# finding: 2 (reading an expert's weights blob directly)
# expect: method_error
def attack(self):
    for record in self.llm.lora_repository.values():
        return record.model_blob.open('r').name
    return 'no expert reachable'
