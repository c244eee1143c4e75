"""The loss landscape around a trained network.

* ``hessian`` — sharpness: top Hessian eigenvalues, trace and eigenvalue density of the loss.
* ``matching`` — weight matching (Git Re-Basin): permute one ResNet's hidden channels onto another's.
* ``connectivity`` — loss and error along the straight line between two networks' weights, and its barrier.

Each module is imported on its own (``from minimascope.landscape import hessian``), so using one does not
load the others' dependencies (scipy for matching, matplotlib for figures).
"""
