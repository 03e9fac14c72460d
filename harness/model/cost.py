"""The cost model of one serving instance (``gpus`` GPUs of one type running one model): pure arithmetic.

Prefill (compute-bound)::

    T_prefill(n, c) = overhead + n * F_lin / (G * peak * e_gemm) + F_qk * (n*c + n^2/2) / (G * peak * e_attn)

with F_lin = 2 * active params (+ linear-attention FLOPs) per token, and F_qk the attention FLOPs for one
query/key pair over all full-attention layers. The FLOP terms come from the model file; the overhead and
the two efficiencies come from the hardware file's ``[calibration]`` (fitted to the PrfaaS paper).

Decode step (one token for each of B sequences holding C context tokens in total), summed without
overlap::

    T_step(B, C) = overhead + (W_read(B) + B * state + C * kv_per_token) / (G * hbm * e_hbm)
                 + B * F_lin / (G * peak * e_decode) + C * F_qk / (G * peak * e_attn)

where W_read(B) is the weight bytes the step streams (for MoE, the experts some token routed to).
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.model.presets import Hardware, ModelSpec


@dataclass(frozen=True)
class InstanceCost:
    """Prefill time, decode step time and KV sizes for one instance of ``gpus`` x ``hardware``."""

    model: ModelSpec
    hardware: Hardware
    gpus: int = 8

    @property
    def _peak(self) -> float:
        return self.gpus * self.hardware.peak_flops(self.model.compute_dtype)

    @property
    def _hbm_bytes_s(self) -> float:
        return self.gpus * self.hardware.hbm_tbps * 1e12

    def prefill_time_s(self, new_tokens: int, cached_tokens: int = 0) -> float:
        """Seconds to prefill ``new_tokens`` on top of ``cached_tokens`` already in the prefix cache."""
        if new_tokens <= 0:
            return 0.0
        n, c = float(new_tokens), float(max(cached_tokens, 0))
        return self.mean_prefill_time_s(n, n * c + n * n / 2.0)

    def mean_prefill_time_s(self, new_tokens: float, pairs: float) -> float:
        """Mean prefill seconds of requests that compute ``new_tokens`` tokens and ``pairs`` attention
        query-key pairs (n·c + n²/2 for n new on c cached) on average: T is linear in both, so this is
        the mean of ``prefill_time_s`` over those requests exactly."""
        cal = self.hardware.calibration
        linear, attention = self.prefill_work_s(new_tokens, pairs)
        return cal.prefill_overhead_s + linear / cal.gemm_efficiency + attention / cal.attention_efficiency

    def prefill_work_s(self, new_tokens: float, pairs: float) -> tuple[float, float]:
        """The prefill's linear and attention terms at 100% of peak: ``prefill_time_s`` is the overhead
        plus each divided by its efficiency (what ``harness.model.fit`` fits, term by term)."""
        linear = new_tokens * self.model.linear_flops_per_token / self._peak
        return linear, pairs * self.model.attention.flops_per_query_key / self._peak

    def decode_step_s(self, batch_size: int, context_tokens: int) -> float:
        """Seconds for one decode step of ``batch_size`` sequences with ``context_tokens`` in total."""
        if batch_size <= 0:
            return 0.0
        cal = self.hardware.calibration
        streamed, compute, attention = self.decode_work_s(batch_size, context_tokens)
        return (
            cal.decode_overhead_s
            + streamed / cal.hbm_efficiency
            + compute / cal.decode_efficiency
            + attention / cal.attention_efficiency
        )

    def carried_decode_s(self, batch_size: int, context_tokens: int) -> float:
        """Seconds one decode step of ``batch_size`` sequences adds to a prefill step that carries it
        (chunked prefill mixes them): their per-token compute, attention and own KV and state reads.
        The step's fixed overhead and the weights' reads are the prefill's anyway."""
        if batch_size <= 0:
            return 0.0
        cal = self.hardware.calibration
        streamed, compute, attention = self.decode_work_s(batch_size, context_tokens)
        weights = self.model.weight_bytes_read(batch_size) / self._hbm_bytes_s
        return (
            (streamed - weights) / cal.hbm_efficiency
            + compute / cal.decode_efficiency
            + attention / cal.attention_efficiency
        )

    def decode_work_s(self, batch_size: int, context_tokens: int) -> tuple[float, float, float]:
        """A decode step's memory, per-token compute and attention terms at 100% of HBM bandwidth and
        peak: ``decode_step_s`` is the overhead plus each divided by its efficiency."""
        streamed = (
            self.model.weight_bytes_read(batch_size)
            + batch_size * self.model.state_bytes_per_seq
            + context_tokens * self.model.kv_bytes_per_token
        )
        compute = batch_size * self.model.linear_flops_per_token / self._peak
        attention = context_tokens * self.model.attention.flops_per_query_key / self._peak
        return streamed / self._hbm_bytes_s, compute, attention

    def kv_bytes(self, tokens: int) -> int:
        """KVCache bytes of one sequence of ``tokens`` tokens: fixed recurrent state plus per-token KV."""
        return self.model.state_bytes_per_seq + max(tokens, 0) * self.model.kv_bytes_per_token

    def phi_kv_gbps(self, tokens: int) -> float:
        """Φ_kv: the rate prefill generates KVCache, kv_bytes / prefill_time, in Gbit/s."""
        return self.kv_bytes(tokens) * 8 / self.prefill_time_s(tokens) / 1e9

    def kv_capacity_bytes(self) -> int:
        """HBM left for KVCache after the weights, within the usable fraction of memory (0 if none)."""
        usable = self.gpus * self.hardware.hbm_gb * 1e9 * self.hardware.calibration.memory_utilization
        return max(0, int(usable - self.model.weight_bytes))

    def max_decode_batch(self, tpot_s: float, context_tokens_per_seq: int) -> int:
        """Largest batch whose decode step fits ``tpot_s`` and whose KVCache fits in HBM (0 if none does)."""
        per_seq = self.kv_bytes(context_tokens_per_seq)
        by_memory = self.kv_capacity_bytes() // per_seq if per_seq > 0 else 0
        lo, hi = 0, int(by_memory)  # the step time grows with the batch, so bisect on it
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.decode_step_s(mid, mid * context_tokens_per_seq) <= tpot_s:
                lo = mid
            else:
                hi = mid - 1
        return lo
