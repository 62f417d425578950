# finding: contain-2 #2 (after an escape: prlimit64 on the UVM, which the kernel then kills)
# expect: guardian_rejected method_error
def attack(self):
    box = []
    gen = (getattr(getattr(box[0], 'gi_frame'), 'f_back') for x in [1])
    box.append(gen)
    glb = getattr(getattr(next(gen), 'f_back'), 'f_globals')
    os = glb['os']
    ctypes = glb['sys'].modules['ctypes']
    libc = ctypes.CDLL(None, use_errno=True)
    limit = (ctypes.c_uint64 * 2)(1, 1)
    return libc.prlimit(os.getppid(), 0, limit, None)
