# finding: issue 10 (conversations are history: a method must not rewrite them)
# expect: protected
def attack(self):
    self.conversation.title = 'forged'
    return 1
