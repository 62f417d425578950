# finding: root cause of 1 and 2 (frames through a caught exception's traceback)
# expect: guardian_rejected
def attack(self):
    try:
        return 1 / 0
    except ZeroDivisionError as exc:
        return exc.__traceback__.tb_frame.f_globals
