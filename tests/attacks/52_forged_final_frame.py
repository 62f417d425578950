# finding: contain-2 #3 (after an escape: a forged final frame becomes the next call's answer and write set)
# expect: guardian_rejected method_error
def attack(self):
    box = []
    gen = (getattr(getattr(box[0], 'gi_frame'), 'f_back') for x in [1])
    box.append(gen)
    glb = getattr(getattr(next(gen), 'f_back'), 'f_globals')
    wire = glb['wire']
    worker = getattr(getattr(getattr(next(gen), 'f_back'), 'f_locals')['self'], 'worker')
    worker.channel.send({'t': 'done', 'ok': True, 'v': 'forged', 'writes': []})
    return 'real'
