"""Rate policies and the headers a decision produces."""

from __future__ import annotations

import pytest

from {{ cookiecutter.package_name }}.rates import Decision, Rate


@pytest.mark.parametrize(
    ("text", "rate", "interval_us"),
    [
        ("1/second", Rate(1, 1), 1_000_000),
        ("100/minute", Rate(100, 60), 600_000),
        ("5000/hour", Rate(5000, 3600), 720_000),
        ("999999999/second", Rate(999_999_999, 1), 1),
    ],
)
def test_rates_parse_print_back_and_give_the_emission_interval(
    text: str, rate: Rate, interval_us: int
) -> None:
    assert Rate.from_string(text) == rate
    assert str(rate) == text
    assert rate.emission_interval_us == interval_us


@pytest.mark.parametrize("text", ["", "100", "100/min", "0/second", "-1/hour", "1.5/second", "x/y"])
def test_malformed_rates_are_refused_with_what_is_accepted(text: str) -> None:
    with pytest.raises(ValueError, match="use N/second, N/minute or N/hour"):
        Rate.from_string(text)


def test_an_allowed_decision_advertises_the_policy_and_what_remains() -> None:
    headers = Decision.from_script(1, 41, 0, 35_400_001).headers(Rate(100, 60), "user")
    assert headers == {
        "RateLimit-Policy": '"user";q=100;w=60',
        "RateLimit": '"user";r=41;t=36',
    }


def test_a_refused_decision_says_when_to_retry_in_whole_seconds() -> None:
    headers = Decision.from_script(0, 0, 1_200_000, 60_000_000).headers(Rate(100, 60), "user")
    assert headers["Retry-After"] == "2"  # 1.2 s, rounded up so the retry is let in
    assert headers["RateLimit"] == '"user";r=0;t=2'


def test_retry_after_is_never_zero() -> None:
    assert Decision.from_script(0, 0, 3, 3).retry_after_seconds == 1


@pytest.mark.parametrize(("limit", "period"), [(0, 60), (10, 0), (-1, 1)])
def test_a_rate_built_in_code_is_checked_too(limit: int, period: int) -> None:
    """`Rate(...)` in a route's code is checked when it is made (at import), not on a request."""
    with pytest.raises(ValueError, match="at least 1"):
        Rate(limit, period)


def test_a_rate_with_another_period_still_prints() -> None:
    assert str(Rate(10, 90)) == "10/90s"
