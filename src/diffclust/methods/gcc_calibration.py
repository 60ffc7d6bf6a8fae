"""GCC's Stage II, generative calibration (METHODS.md §6.4, eq. 7–12), mixed into
:class:`~diffclust.methods.gcc.GCC`.

Each round (G frozen) samples a pool of labelled images with DDIM, pairs every real batch with
pool images of the *same* pseudo-labels and trains F and C on
``L_d + L_cwm + L_ml`` (eq. 12, plus the [PROP] anchor); then G is fine-tuned on the real images
with the new labels ``argmax C(F(X))``.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from ..losses import category_matching_loss, classwise_mmd, reliable_metric_loss
from ..training.checkpoint import load_named_state, named_state
from ..training.loop import RunningMeans, epoch_batches, train_epoch
from ..training.runtime import autocast, progress

__all__ = ["GenerativeCalibration"]


class GenerativeCalibration:
    """Stage II of GCC: the rounds of calibration (``_stage_calibrate``) and generation. The
    estimator supplies F, C and G (``backbone_``, ``head_``, ``generator_unet_``), their
    feature pass (``_features``) and G's training settings (``_ddpm_kwargs``, ``_ddpm_steps``)."""

    @torch.no_grad()
    def _generate(self, n, labels, seed):
        from ..diffusion.pretrain import sample_images

        g = torch.Generator().manual_seed(int(seed))
        return sample_images(self.generator_unet_, n, int(self.sample_steps), eta=0.0,
                             class_labels=torch.as_tensor(labels), generator=g,
                             guidance=float(self.guidance), device=self.device_,
                             dtype=self.amp_dtype_, batch_size=int(self.embed_batch_size))

    def _calibration_loss(self, Fm, Cm, xr, yr, xg, yg, a_ok, ya):
        """Eq. 12 on one batch, ``L_d + L_cwm + L_ml`` (each switchable), plus the [PROP] anchor:
        the Stage-I cross-entropy on the real images flagged ``a_ok`` against their round-start
        labels ``ya``. ``xr``/``yr``: real images and their labels; ``xg``/``yg``: generated
        images and the labels they were drawn for. Returns ``(loss, parts)``."""
        anchor = float(self.anchor_weight) > 0
        with autocast(xr.device, self.amp_dtype_):
            f = Fm(torch.cat([xr, xg])).float()
        fr, fg = f[:len(xr)], f[len(xr):]
        pr = Cm(fr) if anchor or self.label_update == "batch" else None
        if self.label_update == "batch":
            # eq. 7-9 as written: ŷ_i = argmax p_i of the moving network; the generated partner
            # keeps the label it was drawn for
            yr = pr.detach().argmax(1)
        parts = {}
        if anchor:
            parts["l_anchor"] = float(self.anchor_weight) * (
                F.cross_entropy(pr[a_ok], ya[a_ok]) if a_ok.any() else pr.sum() * 0)
        if self.use_mmd:
            parts["l_d"] = classwise_mmd(fr, yr, fg, yg, int(self.n_clusters),
                                         self.mmd_bandwidths, reduce=self.mmd_reduce)
        if self.use_cwm:
            parts["l_cwm"] = category_matching_loss(fg, yg)
        if self.use_ml:
            parts["l_ml"] = reliable_metric_loss(Cm(fg), yg, self.ml_on)
        loss = torch.zeros((), device=xr.device)
        for v in parts.values():
            loss = loss + v
        return loss, parts

    def _stage_calibrate(self, X, ck):
        """Stage II: ``n_rounds`` rounds of :meth:`_calibration_round`, each checkpointed."""
        R = int(self.n_rounds)
        self.history_, r0 = [], 0
        state = ck.load("stage2")
        if state is not None:
            meta, tens = state
            load_named_state(tens, F=self.backbone_, C=self.head_, G=self.generator_unet_)
            r0, self.history_ = int(meta["round"]), list(meta["history"])
            self.resumed_from_ = f"stage II round {r0}"
        if R == 0 or int(self.calib_epochs) + int(self.gen_epochs) == 0:
            return
        params = list(self.backbone_.parameters()) + list(self.head_.parameters())
        opt = torch.optim.Adam(params, lr=self.calib_lr)
        bar = progress(range(r0, R), total=R, initial=r0, desc="GCC rounds", verbose=self.verbose)
        for r in bar:
            rec = self._calibration_round(X, r, opt)
            self.history_.append(rec)
            bar.set_postfix(loss=f"{rec['loss']:.3f}",
                            change=f"{rec['label_change']:.3f}",
                            fidelity=f"{rec['pool_fidelity']:.2f}")
            ck.save("stage2", named_state(F=self.backbone_, C=self.head_, G=self.generator_unet_),
                    {"round": r + 1, "history": self.history_}, tag=str(r + 1))
        bar.close()
        skipped = [h["round"] for h in self.history_ if not h.get("calibrated", True)]
        if skipped:
            import warnings

            worst = min(h["pool_fidelity"] for h in self.history_ if "pool_fidelity" in h)
            warnings.warn(f"GCC: G's samples fell in their own cluster for only {worst:.0%} of "
                          f"the pool (min_pool_fidelity={self.min_pool_fidelity}); F and C "
                          f"were left as they were in round(s) {skipped}. Train G longer "
                          f"(ddpm_epochs) for Stage II to act", RuntimeWarning, stacklevel=3)

    def _calibration_round(self, X, r, opt):
        """Round ``r``: the round-start labels ŷ = argmax C(F(X)) and the anchor's confident
        images; a pool of generated images with labels drawn from ŷ; ``calib_epochs`` epochs of
        eq. 12 on (real, generated) pairs of one label; G fine-tuned on the new labels. Returns
        the round's history record."""
        from ..diffusion.pretrain import pretrain_ddpm

        n, K, dev = len(X), int(self.n_clusters), self.device_
        Fm, Cm, Xt = self.backbone_, self.head_, torch.from_numpy(X)
        g = torch.Generator().manual_seed(self.seed_ + 1000 + r)
        torch.manual_seed(self.seed_ + 4000 + r)  # U-Net dropout: same draws after a resume
        rec, t0 = {"round": r + 1}, time.perf_counter()
        _, logits = self._features(Fm, X, Cm)
        conf, labels = torch.softmax(logits, 1).max(1)
        # [PROP] anchor: the real images whose round-start label is confident enough
        anchor_ok = conf >= float(self.anchor_threshold)
        rec["anchor_fraction"] = float(anchor_ok.float().mean())
        round_labels = labels.clone()
        # ---- the generated pool, labels following the current pseudo-label distribution
        n_gen, ts = n if self.n_generate == "auto" else int(self.n_generate), time.perf_counter()
        pool_y = labels[torch.randint(0, n, (n_gen,), generator=g)].sort().values
        pool_x = self._generate(n_gen, pool_y, self.seed_ + 2000 + r)
        rec["sample_seconds"] = time.perf_counter() - ts
        # [PROP] the pool's fidelity: the share of generated images C∘F puts in the cluster
        # they were drawn for; eq. 12 pulls F towards G's clusters, so a G that ignores its
        # labels would undo the clustering (docs/DECISIONS.md, "GCC: calibrate only on a
        # faithful pool")
        fidelity = float((self._features(Fm, pool_x.numpy(), Cm)[1].argmax(1) == pool_y)
                         .float().mean())
        rec["pool_fidelity"] = fidelity
        rec["calibrated"] = calibrate = fidelity >= float(self.min_pool_fidelity)
        counts = torch.bincount(pool_y, minlength=K)
        offsets = torch.cumsum(counts, 0) - counts
        running = RunningMeans(("l_d", "l_cwm", "l_ml", "l_anchor", "loss"))

        def step(idx):  # a batch of real images, each with a generated one of its label
            yr = labels[idx]
            ok = counts[yr] > 0
            idx, yr = idx[ok], yr[ok]
            if len(idx) < 2:
                return None
            j = offsets[yr] + (torch.rand(len(yr), generator=g)
                               * counts[yr]).long().clamp_max(counts[yr] - 1)
            xr, xg, yg = Xt[idx].to(dev), pool_x[j].to(dev), pool_y[j].to(dev)
            return self._calibration_loss(Fm, Cm, xr, yr.to(dev), xg, yg,
                                          anchor_ok[idx].to(dev), round_labels[idx].to(dev))

        if calibrate and (self.use_mmd or self.use_cwm or self.use_ml
                          or float(self.anchor_weight) > 0):
            B = min(int(self.batch_size), n)
            for ep in range(int(self.calib_epochs)):
                if ep > 0 and self.label_update == "epoch":
                    labels = self._features(Fm, X, Cm)[1].argmax(1)
                Fm.eval()  # frozen BatchNorm statistics; gradients still flow
                Cm.train()
                train_epoch(step, epoch_batches(n, B, g, drop_last=True), opt, running=running,
                            what=f"GCC Stage II in round {r + 1}",
                            hint="lower calib_lr or use precision='fp32'")
        Fm.eval(), Cm.eval()
        rec.update(running.means(), calib_steps=running.steps)
        # ---- fine-tune G on the real images with the improved pseudo-labels
        new_labels = self._features(Fm, X, Cm)[1].argmax(1).numpy()
        rec["label_change"] = float((new_labels != round_labels.numpy()).mean())
        rec["cluster_sizes"] = np.bincount(new_labels, minlength=K).tolist()
        if int(self.gen_epochs) > 0:
            steps = self._ddpm_steps(n, self.gen_epochs)
            # the EMA copy is frozen (requires_grad False): train a trainable copy of it
            res = pretrain_ddpm(X, None, unet=self.generator_unet_.requires_grad_(True),
                                labels=new_labels, n_steps=steps,
                                warmup_steps=max(1, min(50, steps // 10)),
                                seed=self.seed_ + 3000 + r, **self._ddpm_kwargs(X))
            self.generator_unet_ = res.unet.eval()
            rec["ddpm_loss"] = res.history[-1]["loss"] if res.history else None
        rec["seconds"] = time.perf_counter() - t0
        return rec

    def generate(self, n_per_cluster: int = 8, seed: int = 0) -> np.ndarray:
        """Images ``(K·n, C, H, W)`` in [−1, 1] from the fitted conditional generator G, cluster
        by cluster (labels ``repeat(arange(K), n)``)."""
        self._fitted_input()
        y = torch.arange(int(self.n_clusters)).repeat_interleave(int(n_per_cluster))
        return self._generate(len(y), y, seed).numpy()
