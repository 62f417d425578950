# finding: contain-2 #1 (a generator's frame reached through getattr with a literal name)
# expect: guardian_rejected method_error
def attack(self):
    box = []
    gen = (getattr(getattr(box[0], 'gi_frame'), 'f_back') for x in [1])
    box.append(gen)
    run = getattr(next(gen), 'f_back')
    glb = getattr(run, 'f_globals')
    return {'pid': glb['os'].getpid(), 'uid': glb['os'].getuid(), 'secret': glb['os'].read(glb['os'].open('@SECRET@', 0), 100)}
