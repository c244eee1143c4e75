"""The analyses that describe a minimum, one module each.

* ``sharpness`` — top Hessian eigenvalues, trace and eigenvalue density of the training loss.
* ``lanczos`` — the Lanczos math under it, on any symmetric matrix-vector product: top eigenvalues,
  stochastic Lanczos quadrature and its smoothing.
* ``connectivity`` — loss and error along the straight line between two networks, and its barrier.
* ``matching`` — weight matching (Git Re-Basin): permute the hidden channels of one ResNet or plain
  conv/linear chain onto another's.
* ``weights`` — per-layer norms, distance from init, ranks and spectra.
* ``mistakes`` — which test images each of two networks gets wrong, against independent errors.
* ``common`` — the output-folder check and the class-balanced image subset they share.

Each module is imported on its own (``from minimascope.minima import sharpness``), so using one does not
load the others' dependencies (scipy for matching, matplotlib for figures). The table of analyses that the
study, the report and the CLI read is :mod:`minimascope.analyses`; its ``seeds`` row (the seed statistics
of a pair of arms) lives in :mod:`minimascope.optimizer_effect`.
"""
