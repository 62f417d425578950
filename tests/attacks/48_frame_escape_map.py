# finding: contain-2 #1 (getattr passed to map: no call of it in the source)
# expect: guardian_rejected method_error
def attack(self):
    gen = (x for x in [1])
    frame = list(map(getattr, [gen], ['gi' + '_frame']))[0]
    code = list(map(getattr, [frame], ['f' + '_code']))[0]
    return list(map(getattr, [code], ['co' + '_filename']))
