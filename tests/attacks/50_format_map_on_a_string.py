# finding: contain-2 #1 (format_map by a computed name reaches attributes)
# expect: guardian_rejected method_error
def attack(self):
    name = 'format' + '_map'
    template = '{x.' + '_' + '_class_' + '_}'
    return getattr(template, name)({'x': self})
