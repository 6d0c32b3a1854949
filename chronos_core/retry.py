"""Retry policies: how many attempts a slot gets and how long to wait between them."""

from __future__ import annotations

import random
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["RetryPolicy", "RetryStrategy"]


class RetryStrategy(StrEnum):
    IMMEDIATE = "immediate"
    LINEAR = "linear"
    EXPONENTIAL = "exponential"


class RetryPolicy(BaseModel):
    """``max_attempts`` counts every attempt, the first included (1 means no retry).

    The wait before attempt n+1, after n failed attempts, is: immediate 0; linear ``delay * n``;
    exponential ``delay * 2 ** (n - 1)``; then capped at ``max_delay``; then, with jitter j, multiplied by
    a uniform factor in [1 - j, 1].
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    strategy: RetryStrategy = RetryStrategy.EXPONENTIAL
    max_attempts: int = Field(default=1, ge=1, le=100)
    delay: float = Field(default=1.0, ge=0, le=86400 * 7)
    max_delay: float = Field(default=3600.0, ge=0, le=86400 * 7)
    jitter: float = Field(default=0.0, ge=0, le=1)

    @model_validator(mode="after")
    def _delay_within_cap(self) -> RetryPolicy:
        if self.max_delay < self.delay:
            raise ValueError("max_delay must be at least delay")
        return self

    def should_retry(self, failed_attempts: int) -> bool:
        """Whether another attempt follows after ``failed_attempts`` failures."""
        return failed_attempts < self.max_attempts

    def base_delay(self, failed_attempts: int) -> float:
        """The wait before the next attempt, before jitter, after ``failed_attempts`` (>= 1) failures."""
        n = failed_attempts
        if n < 1:
            raise ValueError("failed_attempts must be at least 1")
        if self.strategy is RetryStrategy.IMMEDIATE:
            return 0.0
        if self.strategy is RetryStrategy.LINEAR:
            wait = self.delay * n
        else:
            wait = self.delay * 2.0 ** min(n - 1, 1000)  # float: overflows to inf, then capped
        return min(wait, self.max_delay)

    def next_delay(self, failed_attempts: int, rng: random.Random | None = None) -> float:
        """The wait before the next attempt, with jitter applied."""
        wait = self.base_delay(failed_attempts)
        if self.jitter and wait:
            wait *= (rng or random).uniform(1 - self.jitter, 1)
        return wait
