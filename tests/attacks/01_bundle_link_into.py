# finding: 1 (a model bundle's link_into plants a symlink anywhere on disk)
# expect: method_error
def attack(self):
    bundles = self.llm.model_bundles
    for name in bundles:
        bundle = bundles[name]
        bundle.files['@PLANT@/json.py'] = bundle.files[list(bundle.files)[0]]
        bundle.link_into('@PLANT@')
    return bundles.link_into('@PLANT@')
