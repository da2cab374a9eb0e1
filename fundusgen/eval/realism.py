"""Realism of a synthetic image set against real reference sets, from Inception features.

Fréchet distance, kernel distance, k-NN precision and recall, and the real-vs-real floor that
gives each figure its scale. Every function takes feature arrays (N x D, one row per image);
see ``fundusgen.eval.features`` for how they are computed.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import linalg

from fundusgen.errors import FundusgenError

FEATURE_NOTE = ("Inception-v3 pool3 features (2048-d, TF inception-2015-12-05 weights), inputs resized to "
                "299 px with clean-fid's float bicubic")


@dataclass
class Estimate:
    """One figure, the sample sizes it came from, its uncertainty where known, and caveats."""
    value: float
    n_real: int
    n_synth: int
    std: float | None = None
    se: float | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _check_features(x: np.ndarray, what: str, at_least: int, metric: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise FundusgenError(f"{what}: expected a 2-d feature array (images x features), got shape {x.shape}")
    if len(x) < at_least:
        raise FundusgenError(f"{what}: {len(x)} image(s), {metric} needs at least {at_least}")
    if not np.isfinite(x).all():
        raise FundusgenError(f"{what}: features contain NaN or infinity")
    return x


def _check_pair(real: np.ndarray, synth: np.ndarray, at_least: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    real = _check_features(real, "real set", at_least, metric)
    synth = _check_features(synth, "synthetic set", at_least, metric)
    if real.shape[1] != synth.shape[1]:
        raise FundusgenError(f"feature sizes differ: real {real.shape[1]}, synthetic {synth.shape[1]}")
    return real, synth


# --- Fréchet distance -------------------------------------------------------------------------

def gaussian_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased, N-1) covariance of the features, as pytorch-fid computes them."""
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """d^2 = ||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)).

    The Fréchet (2-Wasserstein) distance between two Gaussians (Dowson & Landau 1982), used as
    FID by Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local
    Nash Equilibrium". The matrix square root is handled as in pytorch-fid: if the product is
    singular (sqrtm not finite), eps is added to both diagonals; a complex result is accepted only
    when its diagonal's imaginary part is numerical noise.
    """
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    diff = mu1 - mu2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)  # singular products are handled just below
        covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise FundusgenError(f"Fréchet distance: sqrtm has an imaginary part of "
                                 f"{np.max(np.abs(covmean.imag)):.3g} (covariances too ill-conditioned)")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def frechet_distance_low_rank(x: np.ndarray, y: np.ndarray) -> float:
    """The same d^2 from the feature matrices, exact and fast when a set has fewer images than
    features. With A = (X - mu_x) / sqrt(n_x - 1) and B likewise, sigma_x sigma_y = A^T (A B^T) B
    has the nonzero eigenvalues of (A B^T)(A B^T)^T, so Tr (sigma_x sigma_y)^(1/2) is the sum of
    the singular values of the n_x x n_y matrix A B^T: no D x D square root (38 s at D = 2048 on
    one core), and none of its trouble with singular covariances."""
    mu_x, mu_y = x.mean(axis=0), y.mean(axis=0)
    a = (x - mu_x) / np.sqrt(len(x) - 1)
    b = (y - mu_y) / np.sqrt(len(y) - 1)
    diff = mu_x - mu_y
    cross = linalg.svdvals(a @ b.T).sum()
    return float(diff @ diff + (a * a).sum() + (b * b).sum() - 2 * cross)


def fid(real: np.ndarray, synth: np.ndarray) -> Estimate:
    """FID between two feature sets. Below one image per feature dimension the covariance is
    rank-deficient and FID is biased upwards (Chong & Forsyth 2020, "Effectively Unbiased FID"):
    the figure is still returned, with a warning, and compares only with figures at the same N."""
    real, synth = _check_pair(real, synth, 2, "FID")
    notes = [f"FID with {n} {what} images < {real.shape[1]} (feature size) is biased upwards; compare it only "
                f"with figures at the same number of images, such as the real-vs-real floor"
                for what, n in (("real", len(real)), ("synthetic", len(synth))) if n < real.shape[1]]
    if min(len(real), len(synth)) < real.shape[1]:
        value = frechet_distance_low_rank(real, synth)
    else:
        value = frechet_distance(*gaussian_statistics(real), *gaussian_statistics(synth))
    return Estimate(value, len(real), len(synth), warnings=notes)


# --- Kernel Inception distance ----------------------------------------------------------------

def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (x.y / d + 1)^3, the kernel of KID (Bińkowski et al. 2018)."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(k_xx: np.ndarray, k_yy: np.ndarray, k_xy: np.ndarray) -> float:
    """Unbiased MMD^2 (Gretton et al. 2012, Lemma 6):
    1/(m(m-1)) sum_{i!=j} k(x_i,x_j) + 1/(n(n-1)) sum_{i!=j} k(y_i,y_j) - 2/(mn) sum_{i,j} k(x_i,y_j)."""
    m, n = k_xy.shape
    xx = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    yy = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(xx + yy - 2 * k_xy.mean())


def mmd2_jackknife_se(k_xx: np.ndarray, k_yy: np.ndarray, k_xy: np.ndarray) -> float:
    """Standard error of the full-sample unbiased MMD^2 by the two-sample jackknife (Arvesen 1969,
    "Jackknifing U-statistics"): leave out each x_i, then each y_j, in closed form from row sums,
    var = (m-1)/m sum_i (t_-i - mean)^2 + (n-1)/n sum_j (t_-j - mean)^2."""
    m, n = k_xy.shape
    xx_rows = k_xx.sum(axis=1) - np.diagonal(k_xx)
    yy_rows = k_yy.sum(axis=1) - np.diagonal(k_yy)
    xx, yy, xy = xx_rows.sum(), yy_rows.sum(), k_xy.sum()
    yy_term, xx_term = yy / (n * (n - 1)), xx / (m * (m - 1))
    without_x = (xx - 2 * xx_rows) / ((m - 1) * (m - 2)) + yy_term - 2 * (xy - k_xy.sum(axis=1)) / ((m - 1) * n)
    without_y = xx_term + (yy - 2 * yy_rows) / ((n - 1) * (n - 2)) - 2 * (xy - k_xy.sum(axis=0)) / (m * (n - 1))
    var = (m - 1) / m * ((without_x - without_x.mean()) ** 2).sum() \
        + (n - 1) / n * ((without_y - without_y.mean()) ** 2).sum()
    return float(np.sqrt(var))


def kid(real: np.ndarray, synth: np.ndarray, *, num_subsets: int = 100, subset_size: int = 1000,
        max_images: int = 5000, seed: int = 0) -> Estimate:
    """Kernel Inception distance (Bińkowski et al. 2018, "Demystifying MMD GANs").

    ``value`` and ``std`` follow clean-fid and torch-fidelity: the mean and the spread of the
    unbiased MMD^2 over ``num_subsets`` random subsets of min(subset_size, N) images per set.
    ``se`` is the standard error of that mean as an estimate of the population KID: averaged over
    all subsets, the subset estimator equals the full-sample U-statistic, whose jackknife standard
    error is given (the spread over overlapping subsets is not a standard error; with small sets
    every subset is the whole set and the spread is 0).

    Kernel matrices are computed once; sets above ``max_images`` are randomly subsampled to it
    to bound memory (3 x 5000^2 doubles = 600 MB).
    """
    real, synth = _check_pair(real, synth, 2, "KID")
    rng = np.random.default_rng(seed)
    notes = []
    if max(len(real), len(synth)) > max_images:
        notes.append(f"KID computed on {max_images} randomly chosen images per set")
        real = real[np.sort(rng.choice(len(real), min(len(real), max_images), replace=False))]
        synth = synth[np.sort(rng.choice(len(synth), min(len(synth), max_images), replace=False))]
    k_rr, k_ss, k_rs = polynomial_kernel(real, real), polynomial_kernel(synth, synth), polynomial_kernel(real, synth)
    m = min(subset_size, len(real), len(synth))
    subsets = []
    for _ in range(num_subsets):
        r = rng.choice(len(real), m, replace=False)
        s = rng.choice(len(synth), m, replace=False)
        subsets.append(mmd2_unbiased(k_rr[np.ix_(r, r)], k_ss[np.ix_(s, s)], k_rs[np.ix_(r, s)]))
    se = None
    if min(len(real), len(synth)) >= 3:
        se = mmd2_jackknife_se(k_rr, k_ss, k_rs)
    else:
        notes.append("KID standard error needs at least 3 images per set")
    std = float(np.std(subsets, ddof=1)) if num_subsets > 1 else None
    return Estimate(float(np.mean(subsets)), len(real), len(synth), std=std, se=se, warnings=notes)


# --- Precision and recall ---------------------------------------------------------------------

def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.maximum(sq, 0))


def knn_radii(x: np.ndarray, k: int = 3, block: int = 1024) -> np.ndarray:
    """Distance from each sample to its k-th nearest neighbour in the same set (itself excluded)."""
    radii = np.empty(len(x))
    for i in range(0, len(x), block):
        d = _distances(x[i:i + block], x)
        radii[i:i + block] = np.partition(d, k, axis=1)[:, k]  # column 0 is the sample itself
    return radii


def manifold_coverage(queries: np.ndarray, support: np.ndarray, radii: np.ndarray, block: int = 1024) -> float:
    """Share of queries inside at least one ball B(support_j, radii_j)."""
    inside = [(_distances(queries[i:i + block], support) <= radii[None, :]).any(axis=1)
              for i in range(0, len(queries), block)]
    return float(np.concatenate(inside).mean())


def precision_recall(real: np.ndarray, synth: np.ndarray, k: int = 3) -> tuple[Estimate, Estimate]:
    """Improved precision and recall (Kynkäänniemi et al. 2019, "Improved Precision and Recall
    Metric for Assessing Generative Models"): each set's manifold is the union of balls reaching
    each sample's k-th nearest neighbour; precision is the share of synthetic samples on the real
    manifold, recall the share of real samples on the synthetic manifold. The paper uses VGG-16
    features; here Inception features, so the figures compare with each other, not with the paper's.
    """
    real, synth = _check_pair(real, synth, k + 1, f"precision/recall with k={k}")
    precision = manifold_coverage(synth, real, knn_radii(real, k))
    recall = manifold_coverage(real, synth, knn_radii(synth, k))
    return Estimate(precision, len(real), len(synth)), Estimate(recall, len(real), len(synth))


# --- Everything, against every reference ------------------------------------------------------

def compare(real: np.ndarray, synth: np.ndarray, *, k: int = 3, seed: int = 0) -> dict:
    """FID, KID, precision and recall of ``synth`` against ``real``; a metric that cannot be
    computed (too few images) gives {"error": reason} and the others are still reported."""
    out: dict = {"n_real": len(real), "n_synth": len(synth)}
    for name, metric in (("fid", fid), ("kid", lambda r, s: kid(r, s, seed=seed))):
        try:
            out[name] = metric(real, synth).to_dict()
        except FundusgenError as e:
            out[name] = {"error": str(e)}
    try:
        precision, recall = precision_recall(real, synth, k)
        out["precision"], out["recall"] = precision.to_dict(), recall.to_dict()
    except FundusgenError as e:
        out["precision"] = out["recall"] = {"error": str(e)}
    return out


def split_floor(real: np.ndarray, n_synth: int, *, k: int = 3, seed: int = 0) -> dict:
    """Real-vs-real floor within one set: a random part of min(n_synth, N/2) images plays the
    synthetic set against the rest. FID depends on the number of images, so the part matches the
    synthetic set's size where the real set allows; with n_synth >= N/2 it is two halves."""
    rest, part = floor_split(real, n_synth, seed)
    return compare(rest, part, k=k, seed=seed)


def floor_split(real: np.ndarray, n_synth: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(rest, part): a seeded random part of min(n_synth, N/2) real rows, to play the synthetic set."""
    order = np.random.default_rng(seed).permutation(len(real))
    part = max(1, min(n_synth, len(real) // 2))
    return real[order[part:]], real[order[:part]]


def realism_report(real_feats: dict[str, np.ndarray], synth_feats: np.ndarray, *, pooled: bool = True,
                   k: int = 3, seed: int = 0) -> dict:
    """Realism figures of the synthetic set against each real set, ready for JSON.

    For each real set: FID, KID (with spread and standard error), precision and recall, and beside
    them the same figures for real-vs-real (``floor``: a part of that set against the rest). With
    several real sets, also every pair of real sets against each other (``real_vs_real``) and,
    if ``pooled``, all real sets together as one more reference named "pooled".
    """
    if not real_feats:
        raise FundusgenError("no real reference set given")
    synth = np.asarray(synth_feats)
    refs = {name: np.asarray(f) for name, f in real_feats.items()}
    if pooled and len(refs) > 1:
        if "pooled" in refs:
            raise FundusgenError("a real set is called 'pooled': that name is kept for all real sets together")
        refs["pooled"] = np.concatenate(list(real_feats.values()))
    per_set = {}
    for name, real in refs.items():
        per_set[name] = compare(real, synth, k=k, seed=seed)
        per_set[name]["floor"] = split_floor(real, len(synth), k=k, seed=seed)
    names = list(real_feats)
    pairs = [{"a": a, "b": b, **compare(refs[a], refs[b], k=k, seed=seed)}
             for i, a in enumerate(names) for b in names[i + 1:]]
    return {"features": FEATURE_NOTE, "n_synth": len(synth), "k": k, "seed": seed,
            "per_real_set": per_set, "real_vs_real": pairs}
