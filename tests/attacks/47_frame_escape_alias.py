# finding: contain-2 #1 (getattr aliased, so the Guardian sees no getattr call)
# expect: guardian_rejected method_error
def attack(self):
    g = getattr
    box = []
    gen = (g(g(box[0], 'gi' + '_frame'), 'f' + '_back') for x in [1])
    box.append(gen)
    glb = g(g(next(gen), 'f' + '_back'), 'f' + '_globals')
    return glb['os'].getuid()
