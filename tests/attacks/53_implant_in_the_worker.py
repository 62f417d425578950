# finding: contain-2 #3 (after an escape: Worker.run replaced, so every later job on that worker is kept)
# expect: guardian_rejected method_error
def attack(self):
    box = []
    gen = (getattr(getattr(box[0], 'gi_frame'), 'f_back') for x in [1])
    box.append(gen)
    glb = getattr(getattr(next(gen), 'f_back'), 'f_globals')
    kept = []
    real_run = glb['Worker'].run
    glb['sys'].modules['builtins'].setattr(glb['Worker'], 'run', lambda w, job: kept.append(job) or real_run(w, job))
    return 'implanted'
