"""The report's longer view: the trend over 30 days and the month, from the stored daily rows,
and the quality kept against the reference model (estimated).

- trend: each period sums the ``daily_reports`` rows of its days (built earlier, status
  ``done``) and the day being built, never re-reading results; a day without a row counts
  nothing (``days`` says how many were reported);
- quality kept: the day's mean explicit rating divided by the reference model's estimated
  quality: the mean of the explicit ratings of its answers over the last 30 days, shrunk
  toward the catalog's ``quality_prior`` for it with the weight of ``PRIOR_WEIGHT`` ratings
  (without a prior: their plain mean; without either: not estimated).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from typing import Any

TREND_DAYS = 30
PRIOR_WEIGHT = 5.0


@dataclass(frozen=True)
class Period:
    label: str
    start: date
    end: date  # inclusive
    days: int  # days with a report
    prompts: int
    spend_usd: float
    reference_cost_usd: float
    waste_usd: float
    ratings: int
    mean_rating: float | None

    @property
    def savings_usd(self) -> float:
        return self.reference_cost_usd - self.spend_usd

    @property
    def savings_share(self) -> float | None:
        return self.savings_usd / self.reference_cost_usd if self.reference_cost_usd else None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(
            start=self.start.isoformat(),
            end=self.end.isoformat(),
            savings_usd=self.savings_usd,
            savings_share=self.savings_share,
        )
        return out


@dataclass(frozen=True)
class DayFigures:
    """One day's totals, as its ``daily_reports`` row holds them."""

    day: date
    prompts: int
    spend_usd: float
    reference_cost_usd: float
    waste_usd: float
    ratings: int
    mean_rating: float | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> DayFigures:
        total = (row.get("figures") or {}).get("total") or {}
        mean = row.get("mean_rating")
        ratings = int(total.get("ratings") or 0) if mean is not None else 0
        return cls(
            row["day"],
            int(row["prompts"]),
            float(row["spend_usd"]),
            float(row["reference_cost_usd"]),
            float(row["waste_usd"]),
            ratings,
            None if mean is None else float(mean),
        )


@dataclass(frozen=True)
class Trend:
    last_30_days: Period
    month_to_date: Period
    daily: list[DayFigures]  # the last 30 days that have a report, oldest first

    def to_json(self) -> dict[str, Any]:
        return {
            "last_30_days": self.last_30_days.to_json(),
            "month_to_date": self.month_to_date.to_json(),
            "daily": [{**asdict(d), "day": d.day.isoformat()} for d in self.daily],
        }


def trend_start(day: date) -> date:
    """The first day the trend of ``day`` reads (the month's first, or 29 days before)."""
    return min(day - timedelta(days=TREND_DAYS - 1), day.replace(day=1))


def build_trend(day: date, today: DayFigures, stored: Iterable[DayFigures]) -> Trend:
    """The trend of ``day`` from the stored rows of earlier days and the day being built."""
    days = {d.day: d for d in stored if d.day < day}
    days[day] = today
    start30 = day - timedelta(days=TREND_DAYS - 1)
    last30 = sorted((d for d in days.values() if start30 <= d.day <= day), key=lambda d: d.day)
    month = [d for d in days.values() if day.replace(day=1) <= d.day <= day]
    return Trend(
        _period("last 30 days", start30, day, last30),
        _period("month to date", day.replace(day=1), day, month),
        last30,
    )


def _period(label: str, start: date, end: date, days: list[DayFigures]) -> Period:
    ratings = sum(d.ratings for d in days)
    rating_sum = sum(d.ratings * d.mean_rating for d in days if d.mean_rating is not None)
    return Period(
        label,
        start,
        end,
        len(days),
        sum(d.prompts for d in days),
        sum(d.spend_usd for d in days),
        sum(d.reference_cost_usd for d in days),
        sum(d.waste_usd for d in days),
        ratings,
        rating_sum / ratings if ratings else None,
    )


@dataclass(frozen=True)
class QualityKept:
    reference_model: str
    mean_rating: float | None  # the day's answers
    reference_quality: float | None  # estimated (module docstring)
    reference_ratings: int  # the reference's rated answers behind the estimate
    prior: float | None  # the catalog's quality_prior of the reference

    @property
    def kept(self) -> float | None:
        """The share of the reference's quality the day's answers kept."""
        if self.mean_rating is None or not self.reference_quality:
            return None
        return self.mean_rating / self.reference_quality

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "kept": self.kept}


def estimate_quality_kept(
    reference_model: str,
    mean_rating: float | None,
    reference_ratings: tuple[int, float],
    prior: float | None,
) -> QualityKept:
    """``reference_ratings``: (count, sum) of the reference's explicit ratings in the window."""
    n, total = reference_ratings
    if prior is not None:
        est: float | None = (PRIOR_WEIGHT * prior + total) / (PRIOR_WEIGHT + n)
    else:
        est = total / n if n else None
    return QualityKept(reference_model, mean_rating, est, n, prior)


__all__ = [
    "DayFigures",
    "Period",
    "QualityKept",
    "TREND_DAYS",
    "Trend",
    "build_trend",
    "estimate_quality_kept",
    "trend_start",
]
