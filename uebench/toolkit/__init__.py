"""Building blocks that several methods share, apart from the core that runs the benchmark.

- ``perturb``: PGD steps, projections and batching (EM, REM, TAP, NTGA, UCL, TUE, AT)
- ``surrogate``: a classifier trained on the clean protected set, cached (TAP, AAP)
- ``augment``: contrastive-style augmentations of a given strength, differentiable (AUE, AAP)
- ``diffusion``: the DDPM of clean data and the purification base class (LE, AVATAR)
- ``perceptual``: perceptual distances, LPIPS or a stand-in (LE)
- ``contrastive``: SimCLR, its losses and the linear probe (UCL, TUE, and the contrastive protocol)
- ``images``: uint8 round trips and JPEG (ISS, UEraser)

A method imports what it needs from here; the core (``uebench/*.py``) never imports a method.
"""
