"""Retry arithmetic, exactly as DESIGN.md section 2 writes it."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from chronos_core import RetryPolicy

delays = st.floats(0, 1000, allow_nan=False)
attempts = st.integers(1, 200)


@given(n=attempts, delay=delays)
def test_immediate_never_waits(n: int, delay: float) -> None:
    assert RetryPolicy(strategy="immediate", delay=delay, max_delay=2000).base_delay(n) == 0


@given(n=attempts, delay=delays, cap=delays)
def test_linear_is_delay_times_n_capped(n: int, delay: float, cap: float) -> None:
    p = RetryPolicy(strategy="linear", delay=delay, max_delay=max(cap, delay))
    assert p.base_delay(n) == min(delay * n, max(cap, delay))


@given(n=attempts, delay=delays, cap=delays)
def test_exponential_doubles_from_delay_capped(n: int, delay: float, cap: float) -> None:
    cap = max(cap, delay)
    p = RetryPolicy(strategy="exponential", delay=delay, max_delay=cap)
    assert p.base_delay(n) == min(delay * 2 ** (n - 1), cap)


def test_examples() -> None:
    p = RetryPolicy(strategy="exponential", delay=2, max_delay=10, max_attempts=5)
    assert [p.base_delay(n) for n in (1, 2, 3, 4)] == [2, 4, 8, 10]
    lin = RetryPolicy(strategy="linear", delay=3, max_delay=100)
    assert [lin.base_delay(n) for n in (1, 2, 3)] == [3, 6, 9]


@given(n=attempts, jitter=st.floats(0, 1), seed=st.integers())
def test_jitter_scales_by_a_factor_between_1_minus_j_and_1(n: int, jitter: float, seed: int) -> None:
    p = RetryPolicy(strategy="linear", delay=5, max_delay=10_000, jitter=jitter)
    base = p.base_delay(n)
    wait = p.next_delay(n, random.Random(seed))
    assert base * (1 - jitter) - 1e-9 <= wait <= base + 1e-9


def test_max_attempts_counts_the_first() -> None:
    once = RetryPolicy(max_attempts=1)
    assert not once.should_retry(1)
    thrice = RetryPolicy(max_attempts=3)
    assert [thrice.should_retry(n) for n in (1, 2, 3)] == [True, True, False]


@pytest.mark.parametrize(
    "bad",
    [{"strategy": "fibonacci"}, {"max_attempts": 0}, {"delay": -1}, {"jitter": 1.5},
     {"delay": 10, "max_delay": 5}, {"surprise": 1}],
)
def test_invalid_policies_are_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        RetryPolicy.model_validate(bad)
