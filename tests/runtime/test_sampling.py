"""Sampling: greedy, temperature, top-k, top-p, min-p, repetition penalty, seeds, and the device top-k path."""

from __future__ import annotations

import numpy as np
import pytest

from webgemma.sampling import Sampler, SamplingSettings

RNG = np.random.default_rng(0)
LOGITS = RNG.standard_normal(1000).astype(np.float32) * 3


def draws(settings: SamplingSettings, logits=LOGITS, n=2000, previous=()) -> np.ndarray:
    sampler = Sampler(settings)
    return np.array([sampler(logits, list(previous)) for _ in range(n)])


def top(logits, k):
    return set(np.argsort(-logits)[:k].tolist())


def test_greedy_is_argmax_and_ignores_the_seed():
    assert set(draws(SamplingSettings(temperature=0, seed=1), n=5)) == {int(np.argmax(LOGITS))}


def test_seed_reproduces_and_different_seeds_differ():
    a = draws(SamplingSettings(temperature=1.0, top_k=0, top_p=1.0, seed=42), n=50)
    b = draws(SamplingSettings(temperature=1.0, top_k=0, top_p=1.0, seed=42), n=50)
    c = draws(SamplingSettings(temperature=1.0, top_k=0, top_p=1.0, seed=43), n=50)
    assert (a == b).all() and (a != c).any()


def test_temperature_one_follows_the_softmax():
    logits = np.array([0.0, 1.0, 2.0], np.float32)
    counts = np.bincount(draws(SamplingSettings(temperature=1.0, top_k=0, top_p=1.0, seed=0), logits, n=20000), minlength=3)
    expected = np.exp(logits) / np.exp(logits).sum()
    assert np.abs(counts / counts.sum() - expected).max() < 0.02


def test_low_temperature_sharpens():
    hot = draws(SamplingSettings(temperature=2.0, top_k=0, top_p=1.0, seed=0))
    cold = draws(SamplingSettings(temperature=0.2, top_k=0, top_p=1.0, seed=0))
    best = int(np.argmax(LOGITS))
    assert (cold == best).mean() > (hot == best).mean()


def test_top_k_keeps_only_the_k_best():
    got = set(draws(SamplingSettings(temperature=5.0, top_k=7, top_p=1.0, seed=0)).tolist())
    assert got <= top(LOGITS, 7) and len(got) == 7


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], np.float32))
    got = set(draws(SamplingSettings(temperature=1.0, top_k=0, top_p=0.8, seed=0), logits).tolist())
    assert got == {0, 1}  # 0.5 + 0.3 reaches 0.8; the token that crosses p stays
    got = set(draws(SamplingSettings(temperature=1.0, top_k=0, top_p=0.81, seed=0), logits).tolist())
    assert got == {0, 1, 2}


def test_min_p_drops_tokens_far_below_the_best():
    logits = np.log(np.array([0.6, 0.3, 0.05, 0.05], np.float32))
    got = set(draws(SamplingSettings(temperature=1.0, top_k=0, top_p=1.0, min_p=0.2, seed=0), logits).tolist())
    assert got == {0, 1}


def test_repetition_penalty_lowers_seen_tokens():
    logits = np.array([2.0, 1.9, -1.0], np.float32)
    assert draws(SamplingSettings(temperature=0), logits, n=1)[0] == 0
    assert draws(SamplingSettings(temperature=0, repetition_penalty=1.5), logits, n=1, previous=[0])[0] == 1


def test_device_top_k_candidates_give_the_full_vocabulary_result():
    """The engine reads only the 64 best logits when sampling cannot pick anything else."""
    order = np.argsort(-LOGITS, kind="stable")[:64]
    values, ids = LOGITS[order], order.astype(np.int64)
    for settings in (SamplingSettings(temperature=0), SamplingSettings(temperature=0, repetition_penalty=1.3),
                     SamplingSettings(temperature=0.7, top_k=40, top_p=0.9, seed=3)):
        assert not Sampler(settings).needs_all_logits(64)
        previous = [int(ids[0]), int(ids[5])]
        full, cand = Sampler(settings), Sampler(settings)
        if settings.temperature == 0:
            assert full(LOGITS, previous) == cand(values, previous, ids)
        else:
            assert {cand(values, previous, ids) for _ in range(300)} <= set(ids[:40].tolist())


@pytest.mark.parametrize("settings", [SamplingSettings(top_k=0), SamplingSettings(top_k=100),
                                      SamplingSettings(temperature=0, repetition_penalty=0.8)])
def test_settings_that_need_every_logit(settings):
    assert Sampler(settings).needs_all_logits(64)


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_k=-1), dict(top_p=0), dict(top_p=1.5),
                                 dict(min_p=1), dict(repetition_penalty=0)])
def test_invalid_settings_say_what_is_wrong(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        SamplingSettings(**bad)
