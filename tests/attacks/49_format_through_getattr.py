# finding: contain-2 #1 (str.format taken from the class with getattr walks attributes of a computed template)
# expect: guardian_rejected method_error
def attack(self):
    fmt = getattr(str, 'format')
    template = '{0.' + '_' + '_class_' + '_.' + '_' + '_mro_' + '_}'
    return fmt(template, self)
