"""Building blocks that several methods share, apart from the core that runs the benchmark.

- ``perturb``: PGD steps and projections (EM, REM, TAP, NTGA, UCL, TUE, AT); the index batches
  it re-exports are the core's training helpers (``uebench.train``)
- ``surrogate``: a classifier trained on the clean protected set, cached (TAP, AAP)
- ``augment``: contrastive-style augmentations of a given strength, differentiable (AUE, AAP)
- ``diffusion``: the DDPM of clean data: its configs, network and training
- ``sampling``: its forward noising and guided reverse chain, the cached model of the reference
  split, and the purification base class (LE, AVATAR, ECLIPSE)
- ``perceptual``: perceptual distances, LPIPS or a stand-in (LE)
- ``contrastive``: SimCLR, its losses and the linear probe (UCL, TUE, and ``uebench.protocols.contrastive``)
- ``images``: uint8 round trips and JPEG (ISS, UEraser)

A method imports what it needs from here; the core (``uebench/*.py``) never imports a method.
"""
