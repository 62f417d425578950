# finding: 8 (creating objects without end)
# expect: timeout too_large
def attack(self):
    made = []
    while True:
        made.append(self.clone())
