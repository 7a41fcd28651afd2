"""Toy models that know something: a vision chat model and a Stable Diffusion trained on
pictures of coloured shapes (`shapes.py`), shipped with limner, so tests and the demo prove
meaning offline, not only wiring."""
