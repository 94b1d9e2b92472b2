"""The method's cores: critique -> revision (revision.py) and AI preference labels (labels.py).

Library code: typed arguments and settings dataclasses, a `TextSampler` for
the model's words; the stages in cai_jax/stages/ turn a config into these calls.
"""
