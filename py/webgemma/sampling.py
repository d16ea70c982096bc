"""Choosing the next token: greedy, or temperature / top-k / top-p / min-p sampling with a repetition penalty.

The processors run in transformers' order (repetition penalty, temperature, top-k, top-p, min-p) on float64
copies of the logits; a seeded generator makes sampling reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingSettings:
    temperature: float = 1.0  # 0 means greedy
    top_k: int = 64  # 0 disables
    top_p: float = 0.95  # 1 disables
    min_p: float = 0.0  # 0 disables
    repetition_penalty: float = 1.0  # 1 disables
    seed: int | None = None

    def __post_init__(self):
        checks = [
            (self.temperature >= 0, "temperature must be ≥ 0 (0 = greedy)"),
            (self.top_k >= 0, "top_k must be ≥ 0 (0 = off)"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (0 <= self.min_p < 1, "min_p must be in [0, 1)"),
            (self.repetition_penalty > 0, "repetition_penalty must be > 0 (1 = off)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


class Sampler:
    def __init__(self, settings: SamplingSettings):
        self.settings = settings
        self.rng = np.random.default_rng(settings.seed)

    def needs_all_logits(self, candidates: int) -> bool:
        """Whether sampling needs every logit, or only the `candidates` best (greedy, top-k within them).

        A repetition penalty ≥ 1 only lowers scores, so it cannot lift a token into the best candidates."""
        s = self.settings
        return not (s.temperature == 0 or 0 < s.top_k <= candidates) or s.repetition_penalty < 1.0

    def __call__(self, logits: np.ndarray, previous: list[int], ids: np.ndarray | None = None) -> int:
        """The next token from all logits, or from the best candidates' logits when their token `ids` are given."""
        s = self.settings
        scores = logits.astype(np.float64)
        if s.repetition_penalty != 1.0 and previous:
            if ids is None:
                seen = np.unique(np.asarray(previous, dtype=np.int64))
            else:
                seen = np.flatnonzero(np.isin(ids, previous))
            picked = scores[seen]
            scores[seen] = np.where(picked > 0, picked / s.repetition_penalty, picked * s.repetition_penalty)
        pick = self._choose(scores)
        return int(pick if ids is None else ids[pick])

    def _choose(self, scores: np.ndarray) -> int:
        s = self.settings
        if s.temperature == 0:
            return int(np.argmax(scores))
        scores /= s.temperature
        if 0 < s.top_k < scores.size:
            kth = np.partition(scores, -s.top_k)[-s.top_k]
            scores[scores < kth] = -np.inf
        probs = _softmax(scores)
        if s.top_p < 1.0:
            order = np.argsort(-probs, kind="stable")
            cumulative = np.cumsum(probs[order])
            # keep the smallest set whose mass reaches top_p (the token that crosses it stays)
            drop = order[np.searchsorted(cumulative, s.top_p, side="left") + 1 :]
            probs[drop] = 0.0
        if s.min_p > 0:
            probs[probs < s.min_p * probs.max()] = 0.0
        probs /= probs.sum()
        return int(self.rng.choice(probs.size, p=probs))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - np.max(x))
    return e / e.sum()
