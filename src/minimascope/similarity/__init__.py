"""Layer-by-layer similarity of two networks' activations on the same images.

Every measure takes activations as (n, p) matrices, rows = samples, and centres columns first.

* ``cka`` — linear CKA (Kornblith et al. 2019): ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F), exact over all
  samples. Similarity in [0, 1].
* ``cka_debiased`` — linear CKA from the unbiased HSIC estimator (Song et al. 2012), exact over all
  samples: plain CKA's bias grows with layer width over n (unrelated 16,384-wide layers on 250 images
  score ~0.3), the debiased value stays near 0 for them. Not clipped: it may fall slightly below 0.
* ``cka_minibatch`` — linear CKA from unbiased HSIC (Song et al. 2012) averaged over
  minibatches (Nguyen et al. 2021): mean HSIC_xy / sqrt(mean HSIC_xx · mean HSIC_yy).
* ``svcca`` — SVCCA (Raghu et al. 2017): keep each side's top singular directions explaining 99%
  of the variance, then the mean canonical correlation. Similarity in [0, 1].
* ``mean_cca`` — mean canonical correlation over every direction above numerical rank.
* ``procrustes`` — orthogonal Procrustes distance (Ding et al. 2021): X, Y centred and divided by
  their Frobenius norms, d = 2 − 2‖XᵀY‖_*. Distance in [0, 2], 0 for identical.

Degenerate inputs never give NaN. A layer without variance (every sample gives the same
activation; constant columns are zeroed exactly, not left as rounding noise) shares nothing with
anything: CKA 0, SVCCA and mean CCA 0, Procrustes 2, with a :class:`SimilarityWarning`; the
same holds for minibatch CKA when a mean unbiased HSIC_xx is not positive. Canonical
correlations are refused (:class:`MinimascopeError`) when a side keeps n − 1 directions, since
they are then all 1 by construction; when the two sides together keep more than n − 1, some
are 1 by construction and a warning says so. NaN or infinite activations are an error.

For whole networks (:func:`similarity_matrices`, :func:`compare_activations`) the work is
planned for 21×21 layers of two ResNet18 on 10,000 images in a few GiB:

* exact CKA walks the upper triangle of the n×n Gram matrices in row panels, all layers at
  once, and accumulates the panels' Frobenius products in float64, so no Gram is ever held
  whole (42 float32 10k×10k Grams would need 16.8 GB) and symmetry halves the flops;
* SVCCA, mean CCA and Procrustes share one eigen-decomposition per layer, of whichever Gram is
  smaller (XᵀX or XXᵀ), truncated to the directions the requested measures need; every layer
  pair then costs one (k_a × n)·(n × k_b) product and small SVDs, on single-threaded workers;
* Procrustes keeps the directions explaining ``procrustes_keep`` (default 99.9%) of each layer's
  variance. The truncation error is bounded per pair (``SimilarityMatrix.error_bound``, a
  rigorous bound on |value − exact|, see :func:`measures._procrustes_value`) and tested; Grams
  larger than :data:`factors.EXACT_EIGEN_LIMIT` (the 16,384-wide stem on 10,000 images) are
  decomposed by randomized range finding, which the same bound covers.

Submodules, each importing only those before it: ``factors`` (per-layer decompositions),
``measures`` (the measures on two matrices), ``minibatch`` (minibatch CKA), ``activations``
(capture and collection), ``matrices`` (whole-network comparison). Constants are read where they
are defined: patch ``factors.EXACT_EIGEN_LIMIT``, not the name re-exported here.
"""

from minimascope.layers import LAYER_SETS
from minimascope.layers import comparable_layers as default_layers
from minimascope.similarity.activations import (
    POLICIES,
    Progress,
    capture_activations,
    check_layer_names,
    collect_activations,
)
from minimascope.similarity.factors import EXACT_EIGEN_LIMIT
from minimascope.similarity.matrices import (
    SimilarityMatrix,
    compare_activations,
    read_similarity_matrix,
    similarity_matrices,
)
from minimascope.similarity.measures import (
    DEFAULT_MEASURES,
    MEASURES,
    SVCCA_KEEP,
    ArrayLike,
    Measure,
    SimilarityWarning,
    linear_cka,
    mean_cca,
    procrustes_distance,
    svcca,
)
from minimascope.similarity.minibatch import MinibatchCKA

__all__ = [
    "DEFAULT_MEASURES", "EXACT_EIGEN_LIMIT", "LAYER_SETS", "MEASURES", "POLICIES", "SVCCA_KEEP",
    "ArrayLike", "Measure", "MinibatchCKA", "Progress", "SimilarityMatrix", "SimilarityWarning",
    "capture_activations", "check_layer_names", "collect_activations", "compare_activations", "default_layers",
    "linear_cka", "mean_cca", "procrustes_distance", "read_similarity_matrix", "similarity_matrices", "svcca",
]
