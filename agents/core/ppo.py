"""PPO update (clipped surrogate, value loss, entropy bonus, early stop) for any policy that
follows the protocol in agents/policies/base.py.

Losses are masked means over `valid` steps, so the same code trains shuffled transitions (B,) and
whole-episode columns (T, B) of sequence policies: over every valid step of the minibatch
(`loss_aggregation: token`), over each episode's steps and then over episodes (`sequence`), or a
sum over valid steps divided by a constant, the minibatch's size in steps (`token_sum`, Dr. GRPO).
The value loss is `vf_coef` (c_V = 0.5) times the mean squared error (SB3's scale, no 1/2); with
`clip_range_vf` it is PPO2's / CleanRL's clipped form, max((V - R)^2, (V_old + clip(V - V_old) -
R)^2), not SB3's (which keeps only the clipped term). A critic-free policy (`has_critic` False)
has none. With the KL to the reference in the loss (`kl_coef` > 0, the GRPO form), `kl_coef`
times the k3 term exp(ref - logp) - 1 - (ref - logp) on the sampled actions is added: its value
estimates KL(pi || ref), but its gradient (at pi = pi_old, where the samples come from) is that
of KL(ref || pi), -E_ref[grad log pi]. `normalize_advantage` whitens each minibatch's
advantages; without a critic it divides them by their std and subtracts nothing (the critic-free
estimators center them themselves).
"""

from __future__ import annotations

import math
import time
from typing import Any, NamedTuple

import torch

from agents.core.buffer import RolloutBuffer
from agents.core.diagnostics import FirstEpoch
from agents.core.distributed import LOCAL, Distributed
from agents.core.gradsync import BucketedGradSum
from agents.core.optim import make_adam
from agents.policies.base import Minibatch

LOSS_AGGREGATIONS = ("token", "sequence", "token_sum")
# off-policy corrections of an asynchronous run's update (`PPO.correction`, docs/async.md)
CORRECTIONS = ("none", "decoupled", "tis")
OFF_POLICY_STATS = ("is_weight_mean", "is_weight_max", "is_frac_truncated", "is_ess")
STATS = ("policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac", "kl_loss")


class LossInputs(NamedTuple):
    """The no-grad parts of the loss for one minibatch, flat (B,) or (T*B,)."""

    weights: torch.Tensor  # dot(x, weights): the loss's aggregate (token, sequence, token_sum)
    advantages: torch.Tensor  # normalized if configured, 0 on invalid steps
    ratio_low: torch.Tensor  # 1 - clip where advantage < 0, else -inf
    ratio_high: torch.Tensor  # 1 + clip where advantage > 0, else +inf
    coef: torch.Tensor  # -advantages * weights


def _loss_inputs(weights: torch.Tensor, advantages: torch.Tensor, clip: float) -> LossInputs:
    """The clip bounds and coefficients of the loss from the weights and (final) advantages.

    PPO's clipped surrogate max(-A r, -A clip(r, 1-eps, 1+eps)) equals -A clamp(r, lo, hi) with
    hi = 1+eps where A > 0 and lo = 1-eps where A < 0, unbounded otherwise (the simplified form
    from OpenAI Spinning Up): one clamp and one dot in the graph."""
    inf = torch.full_like(advantages, math.inf)
    ratio_low = torch.where(advantages < 0, 1.0 - clip, -inf)
    ratio_high = torch.where(advantages > 0, 1.0 + clip, inf)
    return LossInputs(weights, advantages, ratio_low, ratio_high, -advantages * weights)


def _flat(x: torch.Tensor) -> torch.Tensor:
    """(T, B) -> (T*B,); (B,) unchanged (no view node in the autograd graph)."""
    return x if x.dim() == 1 else x.reshape(-1)


class NonFiniteLossError(RuntimeError):
    """A loss or gradient became NaN/inf: training stops instead of writing a broken model."""


def explained_variance(values: torch.Tensor, returns: torch.Tensor, valid: torch.Tensor) -> float:
    """1 - Var[returns - values] / Var[returns] over valid steps (nan if returns are constant)."""
    v, r = values[valid], returns[valid]
    var = r.var(unbiased=False) if r.numel() else torch.tensor(0.0)
    if r.numel() == 0 or var == 0:
        return float("nan")
    return float(1 - (r - v).var(unbiased=False) / var)


def global_explained_variance(
    values: torch.Tensor, returns: torch.Tensor, valid: torch.Tensor, dist: Distributed
) -> float:
    """`explained_variance` over the valid steps of all ranks, from float64 sums (one
    collective)."""
    v, r = values[valid].double(), returns[valid].double()
    e = r - v
    n, r_sum, r_sq, e_sum, e_sq = dist.sum_floats(
        r.numel(), float(r.sum()), float(r @ r), float(e.sum()), float(e @ e)
    )
    if n == 0:
        return float("nan")
    var_returns = r_sq / n - (r_sum / n) ** 2
    if var_returns <= 1e-12 * r_sq / n:  # constant returns (up to the sums' rounding)
        return float("nan")
    return 1.0 - (e_sq / n - (e_sum / n) ** 2) / var_returns


def flatten_parameters(
    params: list[torch.nn.Parameter], spare: int = 0
) -> torch.nn.Parameter | None:
    """Re-home `params` (and their grads) as views into one flat tensor (and one flat grad).

    The optimizer then steps ONE tensor and gradient clipping takes ONE norm: at 64x64 the
    per-tensor overhead of Adam, zero_grad and clip_grad_norm_ is a large share of a minibatch
    step. The module keeps its own Parameter objects (now views), so forward, state_dict and
    load_state_dict work unchanged; autograd accumulates into the existing `.grad` views in
    place. Returns None (nothing changed) when the params differ in dtype or device.

    `spare` > 0 allocates that many extra elements after the flat grad, in the same storage
    (`flat.grad._base`): a data-parallel run sums its loss statistics there with the gradient.
    """
    if not params or len({(p.dtype, p.device) for p in params}) > 1:
        return None
    total = sum(p.numel() for p in params)
    flat = torch.empty(total, dtype=params[0].dtype, device=params[0].device)
    if spare:
        flat_grad = torch.zeros(total + spare, dtype=flat.dtype, device=flat.device)[:total]
    else:
        flat_grad = torch.zeros_like(flat)
    offset = 0
    for p in params:
        n = p.numel()
        flat[offset : offset + n].copy_(p.detach().reshape(-1))
        p.data = flat[offset : offset + n].view_as(p)
        p.grad = flat_grad[offset : offset + n].view_as(p)
        offset += n
    flat_param = torch.nn.Parameter(flat)
    flat_param.grad = flat_grad
    return flat_param


class PPO:
    """Holds the optimizer and the schedules; `update(buffer, iteration)` runs the epochs."""

    def __init__(
        self,
        policy: Any,
        cfg: Any,
        num_iterations: int,
        dist: Distributed = LOCAL,
        bucket_numel: int = 1 << 20,
    ):
        self.policy, self.cfg = policy, cfg
        # data-parallel: the loss is normalized by GLOBAL valid counts and the gradient summed
        # over ranks once per minibatch; at world size 1 every `dist` call is a no-op
        self.dist = dist
        self._allreduce_seconds = 0.0  # blocking all-reduce time without a BucketedGradSum
        self.num_iterations = max(int(num_iterations), 1)
        self.has_critic = policy.has_critic
        # `normalize_advantage` whitens GAE advantages; a critic-free estimator's advantages are
        # already centered by their own baseline (a zero-variance group is exactly 0, RLOO's
        # leave-one-out mean), which a minibatch mean over tokens would shift by a constant
        # (long episodes most): without a critic it only divides by the std
        self.center_advantages = self.has_critic
        self.kl_coef = 0.0  # beta of a KL term in the loss, of the current `update`
        # diagnostics: keep the first epoch's evaluate outputs of each update (`first_epoch`,
        # read by agents.core.diagnostics); statistics only, the update is the same without
        self.record_first_epoch = False
        self.first_epoch: FirstEpoch | None = None
        # asynchronous runs (agents/run/async_train.py): the rollout's log-probs are the
        # actor's (the behaviour policy, possibly older weights). `off_policy` measures the
        # importance weights pi / pi_behaviour of each update (`off_policy_stats`: pi at the
        # start of the update under `decoupled`, else at each step's first evaluation, which
        # needs `record_first_epoch`); `correction` (CORRECTIONS) changes the loss
        self.off_policy = False
        self.correction = "none"
        self.tis_cap = 2.0
        self.off_policy_stats: dict[str, float] = {}
        self._is_weights: torch.Tensor | None = None  # (T*N,) decoupled: truncated weights
        params = [p for p in policy.parameters() if p.requires_grad]
        flat = flatten_parameters(params, spare=len(STATS) if dist.active else 0)
        self.params = [flat] if flat is not None else params
        # data-parallel, one flat grad: summed in buckets during the backward, with the loss
        # statistics in its spare slots (agents/core/gradsync.py); bucket_numel 0: one bucket
        self.grad_sync: BucketedGradSum | None = None
        if dist.active and flat is not None:
            names = {id(p): n for n, p in policy.named_parameters()}
            self.grad_sync = BucketedGradSum(
                params, flat.grad._base, dist, bucket_numel, extra=len(STATS), names=names
            )
        # one flat tensor: torch's fused Adam kernel without torch.optim's per-step overhead
        self.optimizer = make_adam(self.params, cfg.learning_rate, cfg.adam_eps)

    @property
    def allreduce_seconds(self) -> float:
        """Seconds spent waiting for the gradient all-reduce (benchmarks): with bucketing, only
        the part the backward did not hide."""
        if self.grad_sync is not None:
            return self.grad_sync.wait_seconds
        return self._allreduce_seconds

    def zero_grad(self) -> None:
        """Zero the grads in place (the flat grad's views must stay attached to the params)."""
        for p in self.params:
            if p.grad is not None:
                p.grad.zero_()

    def schedules(self, iteration: int) -> tuple[float, float]:
        """Linear annealing to 0: (learning rate, clip range) for `iteration` (0-based)."""
        frac = 1.0 - iteration / self.num_iterations
        lr = self.cfg.learning_rate * (frac if self.cfg.anneal_lr else 1.0)
        clip = self.cfg.clip_range * (frac if self.cfg.anneal_clip else 1.0)
        return lr, clip

    @torch.no_grad()
    def prepare(self, mb: Minibatch, clip: float) -> LossInputs:
        """Everything in the loss that needs no grad, computed outside the autograd graph (once
        per minibatch; once per update when a minibatch is the whole rollout)."""
        if self.dist.active:  # one collective for the global counts and moments
            return self._inputs(mb, self.dist.sum(self._local_moments(mb)), clip)
        valid = _flat(mb.valid).float()  # (B,) or (T*B,)
        count = valid.sum().clamp(min=1.0)
        weights = token_weights = valid / count
        if self.cfg.loss_aggregation == "sequence":  # each episode's steps weigh 1 in total
            per_episode = valid * _flat(mb.episode_weights)
            weights = per_episode / per_episode.sum().clamp(min=1e-12)
        elif self.cfg.loss_aggregation == "token_sum":  # a constant: every step, valid or not
            weights = valid / max(valid.numel(), 1)
        advantages = _flat(mb.advantages)
        if self.cfg.normalize_advantage:
            mean = torch.dot(advantages, token_weights)
            var = torch.dot((advantages - mean).square(), token_weights)
            std = (var * count / (count - 1).clamp(min=1.0)).sqrt()  # unbiased, like torch.std
            centered = advantages - mean if self.center_advantages else advantages
            advantages = centered / (std + 1e-8) * valid
        if self._is_weights is not None:  # decoupled: each step weighs min(pi_start / mu, cap)
            advantages = advantages * self._is_weights[_flat(mb.step_index)]
        return _loss_inputs(weights, advantages, clip)

    @torch.no_grad()
    def _local_moments(self, mb: Minibatch) -> torch.Tensor:
        """This rank's (5,) float64 sums for `_inputs`: valid steps, advantage sum and sum of
        squares over them, the episode weights' sum (sequence aggregation) and the steps, valid
        or not (token_sum aggregation)."""
        valid = _flat(mb.valid).double()
        advantages = _flat(mb.advantages).double()
        episode = _flat(mb.episode_weights).double() if mb.episode_weights is not None else valid
        size = valid.new_tensor(float(valid.numel()))
        return torch.stack(
            [valid.sum(), advantages @ valid, advantages.square() @ valid, episode @ valid, size]
        )

    @torch.no_grad()
    def _inputs(self, mb: Minibatch, moments: torch.Tensor, clip: float) -> LossInputs:
        """`prepare`'s loss inputs from the GLOBAL sums of `_local_moments` (data-parallel)."""
        n, total, squares, episode_total, size = moments.tolist()
        valid = _flat(mb.valid).float()  # (B,) or (T*B,)
        count = max(n, 1.0)
        weights = valid / count
        if self.cfg.loss_aggregation == "sequence":  # each episode's steps weigh 1 in total
            weights = valid * _flat(mb.episode_weights) / max(episode_total, 1e-12)
        elif self.cfg.loss_aggregation == "token_sum":  # a constant: every step, valid or not
            weights = valid / max(size, 1.0)
        advantages = _flat(mb.advantages)
        if self.cfg.normalize_advantage:
            mean = total / count
            var = max(squares / count - mean * mean, 0.0)  # float64: no cancellation here
            std = math.sqrt(var * count / max(count - 1.0, 1.0))  # unbiased, like torch.std
            centered = advantages - mean if self.center_advantages else advantages
            advantages = centered / (std + 1e-8) * valid
        if self._is_weights is not None:  # decoupled: each step weighs min(pi_start / mu, cap)
            advantages = advantages * self._is_weights[_flat(mb.step_index)]
        return _loss_inputs(weights, advantages, clip)

    def loss(
        self, mb: Minibatch, inputs: LossInputs, clip: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Total loss and a (6,) no-grad stats vector (`STATS`) for one minibatch.

        `inputs.weights` (valid / n_valid) turn sums into masked means: `dot(x, weights)`.
        """
        return self.loss_terms(mb, self.policy.evaluate(mb), inputs, clip)

    def loss_terms(
        self,
        mb: Minibatch,
        outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        inputs: LossInputs,
        clip: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`loss` from the policy's `evaluate(mb)` outputs (log_prob, entropy, value)."""
        cfg = self.cfg
        weights = inputs.weights
        log_prob, entropy, value = outputs  # (B,) or (T, B)
        log_prob, entropy, value = _flat(log_prob), _flat(entropy), _flat(value)
        old_log_prob, returns = _flat(mb.log_probs), _flat(mb.returns)
        # invalid steps carry weight 0; make their ratio exactly 1 so that no inf * 0 = nan
        # can leak from them (a sequence policy returns log_prob 0 there)
        old_log_prob = torch.where(weights > 0, old_log_prob, log_prob.detach())

        log_ratio = log_prob - old_log_prob
        ratio = log_ratio.exp()
        if self.correction == "tis":
            # truncated importance sampling: the policy gradient min(r, cap) * A * grad log pi,
            # no clip band; (log_ratio - its detached self + 1) is 1 with the gradient of log pi
            weight = ratio.detach().clamp(max=self.tis_cap)
            surrogate = weight * (log_ratio - log_ratio.detach() + 1.0)
            policy_loss = torch.dot(surrogate, inputs.coef)
        else:
            policy_loss = torch.dot(ratio.clamp(inputs.ratio_low, inputs.ratio_high), inputs.coef)

        entropy_mean = torch.dot(entropy, weights)
        loss = policy_loss
        if self.has_critic:
            value_error = (value - returns).square()
            if cfg.clip_range_vf is not None:
                old_values = _flat(mb.values)
                clipped = old_values + (value - old_values).clamp(
                    -cfg.clip_range_vf, cfg.clip_range_vf
                )
                value_error = torch.maximum(value_error, (clipped - returns).square())
            value_loss = torch.dot(value_error, weights)
            loss = loss + cfg.vf_coef * value_loss
        else:
            value_loss = policy_loss.new_zeros(())
        if cfg.ent_coef:
            loss = loss - cfg.ent_coef * entropy_mean
        if self.kl_coef:
            # k3 per step, with grad through pi's log-prob: its value estimates KL(pi || ref),
            # its gradient is that of KL(ref || pi) (module docstring)
            ref_log_prob = torch.where(weights > 0, _flat(mb.ref_log_probs), log_prob.detach())
            ref_log_ratio = ref_log_prob - log_prob
            kl_loss = torch.dot(torch.expm1(ref_log_ratio) - ref_log_ratio, weights)
            loss = loss + self.kl_coef * kl_loss
        else:
            kl_loss = policy_loss.new_zeros(())
        with torch.no_grad():
            approx_kl = torch.dot((ratio - 1) - log_ratio, weights)  # k3 estimator
            clipfrac = torch.dot(((ratio - 1).abs() > clip).float(), weights)
            stats = torch.stack(
                [policy_loss, value_loss, entropy_mean, approx_kl, clipfrac, kl_loss]
            ).detach()
        return loss, stats

    def _distributed_step(
        self,
        mb: Minibatch,
        prepared: LossInputs | None,
        clip: float,
        iteration: int,
        record: FirstEpoch | None = None,
        before_any_step: bool = False,
    ) -> torch.Tensor | None:
        """One minibatch step of a data-parallel run. Returns the stats summed over ranks (the
        global minibatch means, as 1 rank computes them: the weights hold the GLOBAL counts), or
        None for the target_kl early stop, decided on those global stats by every rank alike.

        The collectives hide behind compute: the minibatch's global moments are summed while
        the forward runs, the gradient in buckets while the backward runs, and the stats ride
        in the gradient's spare slots (unless target_kl must read them before the backward).
        `record`: keep this minibatch's evaluate outputs there (the first epoch's diagnostics).
        """
        cfg, dist, sync = self.cfg, self.dist, self.grad_sync
        pending = None if prepared is not None else dist.sum_async(self._local_moments(mb))
        empty = _flat(mb.valid).numel() == 0  # this rank owns no step of the minibatch
        outputs = None if empty else self.policy.evaluate(mb)
        if record is not None and outputs is not None:
            record.add(mb, outputs, before_any_step)
        inputs = prepared if pending is None else self._inputs(mb, pending.wait(), clip)
        if empty:
            loss, stats = None, torch.zeros(len(STATS), device=inputs.weights.device)
        else:
            loss, stats = self.loss_terms(mb, outputs, inputs, clip)
        early_stop = cfg.target_kl is not None
        if early_stop:  # SB3's rule needs the global stats before the step
            stats = dist.sum(stats.detach().clone())
            if float(stats[3]) > 1.5 * cfg.target_kl:
                return None
        self.zero_grad()
        if sync is not None:
            sync.extra_slots.copy_(torch.zeros_like(stats) if early_stop else stats)
            sync.begin()
            if loss is not None:
                loss.backward()
            sync.finish(backward_ran=loss is not None)
            if not early_stop:
                stats = sync.extra_slots.clone()
        else:  # several parameter tensors: one blocking all-reduce each
            if loss is not None:
                loss.backward()
            self._allreduce_grads()
            if not early_stop:
                stats = dist.sum(stats.detach().clone())
        grad_norm = None
        if cfg.max_grad_norm is not None and cfg.max_grad_norm > 0:
            grad_norm = self.clip_grad_norm(cfg.max_grad_norm)
        # the reduced stats and norm (identical on every rank) decide: all ranks stop together
        self._check_finite(stats.sum(), grad_norm, stats, iteration)
        self.optimizer.step()
        return stats

    def _allreduce_grads(self) -> None:
        """Sum the gradient over ranks: one all-reduce of the flat gradient buffer."""
        start = time.perf_counter()
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            self.dist.sum(p.grad)
        self._allreduce_seconds += time.perf_counter() - start

    def clip_grad_norm(self, max_norm: float) -> torch.Tensor:
        """Scale the grads so that their global L2 norm is at most `max_norm` (the same rule as
        torch.nn.utils.clip_grad_norm_, written for the usual single flat grad). Returns the
        norm before clipping."""
        grads = [p.grad for p in self.params if p.grad is not None]
        norms = torch.stack([torch.linalg.vector_norm(g) for g in grads])
        total = torch.linalg.vector_norm(norms) if len(grads) > 1 else norms[0]
        scale = (max_norm / (total + 1e-6)).clamp_(max=1.0)
        for g in grads:
            g.mul_(scale)
        return total

    def _check_finite(
        self, loss: torch.Tensor, grad_norm: torch.Tensor | None, stats: torch.Tensor, it: int
    ) -> None:
        """Stop before a NaN/inf loss or gradient reaches the weights (one host sync a step)."""
        check = loss.detach() if grad_norm is None else loss.detach() + grad_norm
        if not torch.isfinite(check):
            p_loss, v_loss, entropy, approx_kl, *_ = stats.tolist()
            raise NonFiniteLossError(
                f"non-finite loss or gradient at iteration {it}: policy_loss={p_loss}, "
                f"value_loss={v_loss}, entropy={entropy}, approx_kl={approx_kl}, "
                f"grad_norm={None if grad_norm is None else float(grad_norm)}; training stopped "
                "before the weights changed, the last checkpoint on disk is the last good one "
                "(lower ppo.learning_rate or check the rewards for inf/nan)"
            )

    def update(
        self, buffer: RolloutBuffer, iteration: int, kl_coef: float = 0.0
    ) -> dict[str, float]:
        """n_epochs over minibatches of `buffer` (GAE already computed). Returns mean stats.
        `kl_coef`: beta of the KL-to-reference term in the loss (0: none, the KL is in the
        reward or off), the beta the rollout's penalty was measured with. With
        `record_first_epoch`, `first_epoch` then holds the first epoch's evaluate outputs per
        step (agents.core.diagnostics)."""
        self.kl_coef = kl_coef
        lr, clip = self.schedules(iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        sequence = self.policy.is_sequence_policy
        self.policy.train()
        decoupled = self.off_policy and self.correction == "decoupled"
        behaviour = self._proximal(buffer) if decoupled else None
        try:
            out = self._epochs(buffer, iteration, lr, clip, sequence)
        finally:
            if behaviour is not None:  # the buffer keeps what the actor sampled with
                buffer.log_probs.copy_(behaviour)
                self._is_weights = None
        if self.off_policy and not decoupled and self.first_epoch is not None:
            # no extra forward pass: the weights at each step's first evaluation (epoch 0)
            first = self.first_epoch
            valid = _flat(buffer.valid) & first.seen
            w = (first.log_prob - _flat(buffer.log_probs))[valid].exp()
            self.off_policy_stats = self._weight_stats(w)
        return out

    def _weight_stats(self, w: torch.Tensor) -> dict[str, float]:
        """Mean, max, fraction above `tis_cap` and effective sample size (as a fraction,
        (sum w)^2 / (n sum w^2): 1 when all are equal) of importance weights `w`."""
        w = w.double()
        if w.numel() == 0:
            return dict.fromkeys(OFF_POLICY_STATS, math.nan)
        return {
            "is_weight_mean": float(w.mean()),
            "is_weight_max": float(w.max()),
            "is_frac_truncated": float((w > self.tis_cap).sum()) / w.numel(),
            "is_ess": float(w.sum() ** 2 / (w.numel() * w.square().sum())),
        }

    @torch.no_grad()
    def _proximal(self, buffer: RolloutBuffer) -> torch.Tensor:
        """`decoupled`, before the epochs: one forward pass without grad gives pi_start, the
        policy at the start of this update, and the importance weights w = pi_start / mu of
        the valid steps (mu: the behaviour policy the actor sampled with, `buffer.log_probs`;
        their statistics go to `off_policy_stats`). The loss then clips against pi_start (the
        buffer's log-probs become pi_start's until the update ends) and weighs each step by
        min(w, tis_cap). Returns the behaviour log-probs, to restore then."""
        batch = buffer.full_batch(self.policy.is_sequence_policy)
        start = _flat(self.policy.evaluate(batch)[0]).float()  # (T*N,) in step order t*N+row
        valid = _flat(batch.valid)
        behaviour = _flat(buffer.log_probs)
        w = torch.where(valid, (start - behaviour).exp(), torch.ones_like(start))  # (T*N,)
        self.off_policy_stats = self._weight_stats(w[valid])
        saved = buffer.log_probs.clone()
        buffer.log_probs.copy_(torch.where(buffer.valid, start.view_as(saved), saved))
        self._is_weights = w.clamp(max=self.tis_cap)
        return saved

    def _epochs(
        self, buffer: RolloutBuffer, iteration: int, lr: float, clip: float, sequence: bool
    ) -> dict[str, float]:
        """The epochs of `update` over minibatches of `buffer`; returns the mean stats."""
        cfg = self.cfg
        stats: list[torch.Tensor] = []
        stopped_early = False
        whole = buffer.full_batch(sequence)
        single = buffer.num_minibatches(cfg.batch_size, sequence) == 1
        prepared = self.prepare(whole, clip) if single else None
        self.first_epoch = None
        if self.record_first_epoch:
            self.first_epoch = FirstEpoch(buffer.n_steps * buffer.num_envs, buffer.device)
        for epoch in range(cfg.n_epochs):
            record = self.first_epoch if epoch == 0 else None
            for mb in [whole] if single else buffer.minibatches(cfg.batch_size, sequence):
                if self.dist.active:
                    step_stats = self._distributed_step(
                        mb, prepared, clip, iteration, record, before_any_step=not stats
                    )
                    if step_stats is None:
                        stopped_early = True
                        break
                    stats.append(step_stats)
                    continue
                inputs = prepared if single else self.prepare(mb, clip)
                outputs = self.policy.evaluate(mb)
                if record is not None:  # `stats` is empty until the first optimizer step
                    record.add(mb, outputs, before_any_step=not stats)
                loss, step_stats = self.loss_terms(mb, outputs, inputs, clip)
                if cfg.target_kl is not None and float(step_stats[3]) > 1.5 * cfg.target_kl:
                    stopped_early = True  # SB3's rule: stop before a step that moves too far
                    break
                self.zero_grad()
                loss.backward()
                grad_norm = None
                if cfg.max_grad_norm is not None and cfg.max_grad_norm > 0:
                    grad_norm = self.clip_grad_norm(cfg.max_grad_norm)
                self._check_finite(loss, grad_norm, step_stats, iteration)
                self.optimizer.step()
                stats.append(step_stats)
            if stopped_early:
                break
        if stats:
            means = torch.stack(stats).mean(0).tolist()  # (n_minibatches, 6) -> (6,)
        else:
            means = [math.nan] * len(STATS)
        out = dict(zip(STATS, means))
        if not self.has_critic:
            del out["value_loss"]
        if not self.kl_coef:
            del out["kl_loss"]
        if self.has_critic:
            out["explained_variance"] = (
                global_explained_variance(buffer.values, buffer.returns, buffer.valid, self.dist)
                if self.dist.active
                else explained_variance(buffer.values, buffer.returns, buffer.valid)
            )
        return {
            **out,
            "lr": lr,
            "clip_range": clip,
            "n_minibatch_steps": len(stats),
            "early_stop": float(stopped_early),
        }
