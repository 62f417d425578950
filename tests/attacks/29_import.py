# finding: 1 (importing os)
# expect: guardian_rejected invalid_source
import os
def attack(self):
    return os.listdir('/')
