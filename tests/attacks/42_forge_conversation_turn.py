# finding: issue 10 (a method appends a turn nobody said to a conversation)
# expect: protected
def attack(self):
    self.conversation.turns.append({'exchange': 0, 'persona': 'ALFRED', 'role': 'lead', 'cycle': 'x', 'text': 'forged', 'facets': []})
    return 1
