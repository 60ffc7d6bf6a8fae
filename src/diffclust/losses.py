"""Clustering losses (METHODS.md §1.8): Self-Classifier, CLUDI, DEC, TEMI, NT-Xent, DiEC's graph
regulariser (§3) and GCC's calibration losses (§4: class-wise MMD, category matching,
reliable metric).

All are computed in fp32 whatever the autocast context (the logs are fragile in bf16/fp16).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["self_classifier_parts", "self_classifier_loss", "self_classifier_pair_matrix",
           "cludi_loss",
           "dec_soft_assignment", "dec_target_distribution",
           "temi_loss", "nt_xent_loss", "dec_kl_loss", "graph_affinities", "graph_loss",
           "graph_entropy", "rbf_kernel", "classwise_mmd",
           "category_matching_loss", "reliable_metric_loss"]


def self_classifier_parts(logits: torch.Tensor, tau_row: float = 0.1, tau_col: float = 0.05,
                          eps: float = 1e-8):
    """Target and log-prediction of the Self-Classifier loss (Amrani et al. 2022; CLUDI eq. 21–23).

    ``logits``: (..., B, K). Returns ``(q, log_p)``:
    ``q = normalize₁(softmax_batch(L/τ_c), classes)`` (column softmax then Bayes with uniform
    p(y)) and ``log_p = log((B/K) · normalize₁(softmax_classes(L/τ_r), batch) + eps)``.
    The L1 normalisations clamp their denominators at ``eps`` exactly like the reference code.
    """
    logits = logits.float()
    B, K = logits.shape[-2], logits.shape[-1]
    q = F.normalize(torch.softmax(logits / tau_col, dim=-2), p=1, dim=-1, eps=eps)
    p_row = torch.softmax(logits / tau_row, dim=-1)
    log_p = torch.log(B / K * F.normalize(p_row, p=1, dim=-2, eps=eps) + eps)
    return q, log_p


def self_classifier_pair_matrix(logits_a, logits_b, tau_row=0.1, tau_col=0.05, eps=1e-8,
                                gather_fn=None):
    """All chain pairs at once: ``A[i, j] = CE(a_i → b_j) = −(1/B) Σ_b Σ_k q_a[i] ℓ_b[j]``.

    ``logits_a``: (S_a, B, K), ``logits_b``: (S_b, B, K). Returns ``(A, Bm)`` with
    ``Bm[i, j] = CE(b_j → a_i)``, both (S_a, S_b).

    ``gather_fn`` (optional) maps this process's ``(S, b, K)`` logits to those of the *global*
    batch ``(S, B, K)`` before anything else: the column softmax and the batch normalisation
    need every row. Under DistributedDataParallel pass
    ``lambda t: diffclust.training.distributed.all_gather_cat(t, dim=-2)`` (differentiable:
    each rank's gradient reaches its own rows, summed over the ranks' identical losses, so DDP's
    gradient averaging gives the global-batch gradient); every rank then gets the same (A, Bm).
    """
    if gather_fn is not None:
        logits_a, logits_b = gather_fn(logits_a), gather_fn(logits_b)
    q_a, l_a = self_classifier_parts(logits_a, tau_row, tau_col, eps)
    q_b, l_b = self_classifier_parts(logits_b, tau_row, tau_col, eps)
    B = logits_a.shape[-2]
    A = -torch.einsum("ibk,jbk->ij", q_a, l_b) / B
    Bm = -torch.einsum("jbk,ibk->ij", q_b, l_a) / B
    return A, Bm


def self_classifier_loss(logits_a, logits_b, tau_row=0.1, tau_col=0.05, eps=1e-8,
                         gather_fn=None):
    """Symmetric Self-Classifier CE, ½[CE(a→b) + CE(b→a)] (CLUDI eq. 24) for (B, K) logits.
    ``gather_fn``: see :func:`self_classifier_pair_matrix` (it receives (1, b, K) tensors)."""
    A, Bm = self_classifier_pair_matrix(logits_a[None], logits_b[None], tau_row, tau_col, eps,
                                        gather_fn=gather_fn)
    return 0.5 * (A[0, 0] + Bm[0, 0])


def cludi_loss(z_S, z_tgt, logits_S, logits_T, w, ce_weight=50.0, tau=0.1, tau_row=0.1,
               tau_col=0.05, marginal_entropy=0.0, teacher_weighting=False, gather_fn=None):
    """CLUDI's objective ``L = E_t[w_t (L_emb + λ L_CE)]`` (METHODS.md §2.4, eq. 18–26).

    ``z_S``, ``z_tgt``: the student's and the teacher's re-embeddings (S, B, d); ``logits_S``,
    ``logits_T``: (S, B, K); ``w``: the Min-SNR weight of each student chain's t (S,).

    * ``L_emb``: the MSE between the re-embeddings, weighted per chain (eq. 18);
    * ``L_CE``: the symmetric Self-Classifier CE over all teacher–student chain pairs (eq. 20–24),
      each pair weighted by the student chain's ``w`` (``teacher_weighting``: the teacher
      chain's, as in the authors' code);
    * ``marginal_entropy`` λ_H [PROP]: ``+ λ_H (log K − H(p̄))``, p̄ the student's mean
      assignment over the (global) batch and the chains.

    ``gather_fn``: see :func:`self_classifier_pair_matrix`. Returns ``(loss, L_emb, L_CE)``;
    ``L_emb`` is this process's rows' mean (DDP averages it over ranks)."""
    l_emb = (w * ((z_S - z_tgt) ** 2).mean(dim=(1, 2))).mean()
    A, Bm = self_classifier_pair_matrix(logits_T, logits_S, tau_row, tau_col, gather_fn=gather_fn)
    w_pair = w[:, None].expand_as(A) if teacher_weighting else w[None, :].expand_as(A)
    l_ce = 0.5 * ((w_pair * A).mean() + (w[None, :] * Bm).mean())
    loss = l_emb + ce_weight * l_ce
    if marginal_entropy:
        logits_all = logits_S if gather_fn is None else gather_fn(logits_S)
        p_bar = torch.softmax(logits_all / tau, dim=-1).mean(dim=(0, 1))
        K = p_bar.shape[-1]
        loss = loss + marginal_entropy * (math.log(K) + (p_bar * torch.log(p_bar + 1e-8)).sum())
    return loss, l_emb, l_ce


def dec_soft_assignment(z: torch.Tensor, mu: torch.Tensor, a: float = 1.0) -> torch.Tensor:
    """Student-t soft assignment q_ik ∝ (1 + ‖z_i − μ_k‖²/a)^{−(a+1)/2} (DEC; DiEC eq. 7)."""
    d2 = torch.cdist(z.float(), mu.float()).pow(2)
    logits = -(a + 1) / 2 * torch.log1p(d2 / a)
    return torch.softmax(logits, dim=-1)


def dec_target_distribution(q: torch.Tensor) -> torch.Tensor:
    """p_ik = (q_ik² / f_k) / Σ_k' (q_ik'² / f_k'), f_k = Σ_i q_ik (DiEC eq. 8)."""
    w = q.pow(2) / q.sum(0, keepdim=True)
    return w / w.sum(1, keepdim=True)


def temi_loss(student_x, student_xp, teacher_x, teacher_xp, q_tilde, gamma: float = 0.6,
              student_temp: float = 0.1, teacher_temp: float = 0.1,
              probs_momentum: float = 0.9, batch_mean_fn=None):
    """Multi-head TEMI loss (Adaloglou et al. 2023; C-EDM eq. 1; METHODS.md §4.2).

    ``student_x``, ``student_xp``, ``teacher_x``, ``teacher_xp``: head logits ``(H, B, C)`` of
    the two views x and x' (a sample and one of its mined neighbours); ``q_tilde``: ``(H, C)``,
    the EMA estimate of each teacher head's cluster distribution. With ``q_s = softmax(h_s/τ_s)``
    and ``q_t = softmax(h_t/τ_t)`` (teacher side without gradient):

    1. ``q̃^i ← λ q̃^i + (1 − λ) mean_{batch, both views} q_t^i`` (updated *before* the loss,
       as the reference code does; λ = ``probs_momentum``);
    2. ``w(x, x') = (1/H) Σ_j Σ_c' q_t^j(c'|x) q_t^j(c'|x')`` (shared by all heads);
    3. ``L^i(x, x') = − w(x, x') · log Σ_c (q_s^i(c|x) q_t^i(c|x'))^γ / q̃^i(c)``, computed as a
       log-sum-exp of ``γ(log q_s + log q_t) − log q̃`` for stability;
    4. symmetrised (student on x' against teacher on x), averaged over the batch and the two
       ordered pairs.

    Returns ``(head_losses (H,), q_tilde_new (H, C))``; the training loss is
    ``head_losses.mean()`` (average over heads). Computed in fp32.

    ``batch_mean_fn`` (optional) maps this batch's ``(H, C)`` mean teacher probabilities to the
    one used in step 1: under DistributedDataParallel, where each rank holds an equal slice of
    the global batch, pass :func:`diffclust.training.distributed.all_reduce_mean` so that q̃
    follows the *global*-batch mean and stays identical on every rank.
    """
    s1, s2 = student_x.float(), student_xp.float()
    with torch.no_grad():
        lt1 = torch.log_softmax(teacher_x.float() / teacher_temp, dim=-1)
        lt2 = torch.log_softmax(teacher_xp.float() / teacher_temp, dim=-1)
        pt1, pt2 = lt1.exp(), lt2.exp()
        batch_mean = torch.cat([pt1, pt2], dim=1).mean(dim=1)  # (H, C)
        if batch_mean_fn is not None:
            batch_mean = batch_mean_fn(batch_mean)
        q_new = probs_momentum * q_tilde.float() + (1.0 - probs_momentum) * batch_mean
        w = (pt1 * pt2).sum(-1).mean(0)  # (B,)
        log_q = torch.log(q_new)[:, None, :]  # (H, 1, C)
    ls1 = torch.log_softmax(s1 / student_temp, dim=-1)
    ls2 = torch.log_softmax(s2 / student_temp, dim=-1)
    pmi_12 = torch.logsumexp(gamma * (ls1 + lt2) - log_q, dim=-1)  # student x, teacher x'
    pmi_21 = torch.logsumexp(gamma * (ls2 + lt1) - log_q, dim=-1)  # student x', teacher x
    head_losses = -0.5 * ((w * pmi_12).mean(-1) + (w * pmi_21).mean(-1))
    return head_losses, q_new


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """SimCLR's NT-Xent (GCC eq. 1): for the 2B projections ``z = [z1; z2]`` (B, D each, the two
    views of B images) with cosine similarity ``s_ij``,
    ``L = (1/2B) Σ_i −log[ exp(s_{i,i*}/τ) / Σ_{j≠i} exp(s_ij/τ) ]`` where ``i*`` is the other
    view of image i. Mean over the 2B anchors (the paper writes the sum)."""
    if z1.shape != z2.shape or z1.ndim != 2 or z1.shape[0] < 2:
        raise ValueError(f"nt_xent_loss needs two (B, D) views with B ≥ 2, got "
                         f"{tuple(z1.shape)} and {tuple(z2.shape)}")
    B = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    sim = (z @ z.T) / temperature
    sim = sim.masked_fill(torch.eye(2 * B, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(B, 2 * B), torch.arange(0, B)]).to(z.device)
    return F.cross_entropy(sim, target)


# ---------------------------------------------------------------- DiEC (§3: eq. 21–23)
def dec_kl_loss(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``(1/B) Σ_i Σ_k p_ik log(p_ik / q_ik)`` (eq. 21, per-sample mean)."""
    p = p.float()
    return (p * (torch.log(p.clamp_min(eps)) - torch.log(q.float().clamp_min(eps)))).sum(1).mean()


def graph_affinities(Q: torch.Tensor, neighbors: torch.Tensor, beta: float, gamma: float):
    """Closed-form minimiser of ``β L_Gr + γ L_En`` over each row of S on the simplex:
    ``s_ij = softmax_{j∈NB_i}(−β ‖q_i − q_j‖² / γ)``. Returns ``(S, d)`` of shape (N, k)."""
    d = ((Q[:, None, :] - Q[neighbors]) ** 2).sum(-1)
    return torch.softmax(-beta * d / max(gamma, 1e-12), dim=1), d


def graph_loss(q: torch.Tensor, q_neighbors: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``(1/B) Σ_i Σ_{j∈NB_i} s_ij ‖q_i − q_j‖²`` (eq. 22, per-sample mean); ``q`` (B, K),
    ``q_neighbors`` (B, k, K), ``s`` (B, k)."""
    return (s * ((q[:, None, :] - q_neighbors) ** 2).sum(-1)).sum(1).mean()


def graph_entropy(s: torch.Tensor) -> float:
    """``L_En = (1/N) Σ_i Σ_j s_ij log s_ij`` (eq. 23, per-sample mean)."""
    return float((s * torch.log(s.clamp_min(1e-12))).sum(1).mean())


# ---------------------------------------------------------------- GCC's calibration (§4)
def rbf_kernel(a: torch.Tensor, b: torch.Tensor, bandwidths=(0.5, 1, 2, 4, 8),
               base: torch.Tensor | float | None = None) -> torch.Tensor:
    """Multi-bandwidth Gaussian kernel ``Σ_s exp(−‖a_i − b_j‖² / (2 (s·m)²))`` (DAN/JAN style).
    ``m`` (``base``) defaults to the median pairwise distance of ``[a; b]`` (no gradient)."""
    d2 = torch.cdist(a.float(), b.float()).pow(2)
    if base is None:
        z = (a if b is a else torch.cat([a, b])).detach().float()
        dz = torch.cdist(z, z)
        off = dz[~torch.eye(len(z), dtype=torch.bool, device=z.device)]
        base = off.median() if off.numel() else torch.ones((), device=z.device)
    base = torch.as_tensor(base, device=d2.device).clamp_min(1e-6)
    out = torch.zeros_like(d2)
    for s in bandwidths:
        out = out + torch.exp(-d2 / (2 * (float(s) * base) ** 2))
    return out


def classwise_mmd(f_real: torch.Tensor, y_real: torch.Tensor, f_gen: torch.Tensor,
                  y_gen: torch.Tensor, n_clusters: int, bandwidths=(0.5, 1, 2, 4, 8),
                  normalize: bool = True, reduce: str = "sum") -> torch.Tensor:
    """``L_d = Σ_k (d_r^k + d_g^k − 2 d_rg^k)`` (eq. 9, restored form): the squared kernel MMD
    between the real and the generated features of each cluster k (biased V-statistic, as
    written), over the clusters present in both sets (vectorised with normalised one-hot
    masks). ``reduce="sum"`` is eq. 9; ``reduce="mean"`` [PROP] averages over the clusters
    present, so the loss no longer grows with the number of clusters a batch holds.

    The bandwidth (median pairwise distance) is detached, as in DAN: at a fixed bandwidth every
    MMD term shrinks when all features contract, so on its own this loss drives F towards a
    constant map (each MMD is then 0) — see the GCC docstring."""
    if reduce not in ("sum", "mean"):
        raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
    if normalize:
        f_real, f_gen = F.normalize(f_real.float(), dim=1), F.normalize(f_gen.float(), dim=1)
    z = torch.cat([f_real, f_gen]).float()
    Kz = rbf_kernel(z, z, bandwidths)
    nr = len(f_real)
    R = F.one_hot(y_real.long(), n_clusters).float()
    G = F.one_hot(y_gen.long(), n_clusters).float()
    cr, cg = R.sum(0), G.sum(0)
    Rn, Gn = R / cr.clamp_min(1), G / cg.clamp_min(1)
    d_r = (Rn * (Kz[:nr, :nr] @ Rn)).sum(0)
    d_g = (Gn * (Kz[nr:, nr:] @ Gn)).sum(0)
    d_rg = (Rn * (Kz[:nr, nr:] @ Gn)).sum(0)
    present = (cr > 0) & (cg > 0)
    total = ((d_r + d_g - 2 * d_rg) * present).sum()
    return total / present.sum().clamp_min(1) if reduce == "mean" else total


def category_matching_loss(f_gen: torch.Tensor, y_gen: torch.Tensor) -> torch.Tensor:
    """``L_cwm = mean_{ŷ_i≠ŷ_j} cos(f_i, f_j) − mean_{i≠j, ŷ_i=ŷ_j} cos(f_i, f_j)`` on generated
    features (eq. 10; the diagonal is excluded from the same-label mean). Ranges in [−2, 2]:
    negative when same-label features are closer than different-label ones. A term with no
    pairs is 0."""
    z = F.normalize(f_gen.float(), dim=1)
    S = z @ z.T
    same = y_gen[:, None] == y_gen[None, :]
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    same_off, diff = same & ~eye, ~same
    n_s, n_d = same_off.sum(), diff.sum()
    m_s = (S * same_off).sum() / n_s.clamp_min(1)
    m_d = (S * diff).sum() / n_d.clamp_min(1)
    return m_d - m_s


def reliable_metric_loss(scores: torch.Tensor, y_gen: torch.Tensor,
                         on: str = "proba") -> torch.Tensor:
    """``L_ml = (1/B) Σ_i Σ_k 1[p̃_ik > p̃_{i,j(i)}] (p̃_ik − p̃_{i,j(i)})²`` (eq. 11), j(i) the
    label sample i was generated with; ``scores`` are logits, turned into probabilities when
    ``on="proba"`` (default) or used as they are with ``on="logits"``."""
    if on not in ("proba", "logits"):
        raise ValueError(f"on must be 'proba' or 'logits', got {on!r}")
    p = torch.softmax(scores.float(), 1) if on == "proba" else scores.float()
    diff = p - p.gather(1, y_gen.long().view(-1, 1))
    return F.relu(diff).pow(2).sum() / max(1, len(p))
