from __future__ import annotations

import math
import random

import pytest
from synth import ALPHABET

from poetgen.repetition import has_reduplication, lines_of, measure, second_use_stats, summarize, uses

A, B, C, D, E, F, G, H = ALPHABET[:8]


def body(*lines: str) -> str:
    """A body of the given lines, commas after odd lines and full stops after even ones."""
    return "".join(line + ("，" if i % 2 == 0 else "。") for i, line in enumerate(lines))


def test_lines_drop_marks_and_empty_lines():
    assert lines_of(body(A + B, C + D) + "。") == [A + B, C + D]


def test_a_reduplicated_pair_is_one_use():
    assert uses(body(A + A + B, C + D + E)) == {A: 1, B: 1, C: 1, D: 1, E: 1}


def test_a_pair_and_a_use_elsewhere_are_two_uses():
    poem = body(A + A + B, C + A + E)
    assert uses(poem)[A] == 2
    assert measure(poem).repeated == 1


def test_three_in_a_row_is_two_uses():
    assert uses(body(A + A + A, B + C + D))[A] == 2


def test_adjacency_does_not_cross_a_line_end():
    poem = body(B + A, A + C)
    assert uses(poem)[A] == 2
    assert not has_reduplication(poem)


def test_measure_counts_distinct_repeated_characters_and_most_uses():
    poem = body(A + B + C + D + A, B + E + F + G + A)
    r = measure(poem)
    assert r.repeated == 2  # A three times, B twice
    assert r.max_uses == 3
    assert not r.reduplicated


def test_summarize_shares():
    poems = [
        body(A + B, C + D),  # nothing
        body(A + A, C + D),  # 叠字 only
        body(A + B, A + D),  # one repeat
        body(A + B + A, A + A + C),  # A: 2 + 1 = 3 uses, 叠字
    ]
    s = summarize(poems)
    assert s.poems == 4
    assert s.mean_repeated == pytest.approx(2 / 4)
    assert s.any_repeat == pytest.approx(2 / 4)
    assert s.reduplication == pytest.approx(2 / 4)
    assert s.thrice == pytest.approx(1 / 4)


def test_summarize_of_nothing_is_zero():
    assert summarize([]).poems == 0


def test_second_use_counts_poems_and_reuses():
    poems = [body(A + B, A + C), body(A + D, E + F), body(B + G, H + C)]
    stats = second_use_stats(poems)
    assert (stats[A].poems, stats[A].reused, stats[A].p_again) == (2, 1, 0.5)
    assert (stats[B].poems, stats[B].reused) == (2, 0)
    assert list(stats)[0] == A  # the most reused first


def test_second_use_expected_is_the_independent_chance():
    # A makes up half of all uses; in a poem of 4 independent draws at 1/2, P(N >= 2 | N >= 1) is
    # (1 - 1/16 - 4/16) / (1 - 1/16) = 11/15
    poems = [body(A + B, A + C), body(A + D, A + E)]
    expected = 11 / 15
    assert stats_of(poems, A).expected == pytest.approx(expected)
    assert stats_of(poems, A).lift == pytest.approx(1 / expected)


def stats_of(poems, ch):
    return second_use_stats(poems)[ch]


def test_second_use_same_line_share():
    poems = [body(A + B + A, C + D + E), body(A + B + C, D + E + A)]
    assert stats_of(poems, A).same_line == pytest.approx(1 / 2)


def test_second_use_min_poems_filters():
    poems = [body(A + B, C + D), body(A + E, F + G)]
    assert set(second_use_stats(poems, min_poems=2)) == {A}


def test_lift_near_one_when_characters_are_drawn_independently():
    rng = random.Random(0)
    alphabet = ALPHABET[:20]
    poems = [body(*("".join(rng.choice(alphabet) for _ in range(5)) for _ in range(4))) for _ in range(3000)]
    # 叠字 pairs are not uses, so the independent model overstates reuse a little; stay close to 1
    lifts = [s.lift for s in second_use_stats(poems).values()]
    assert all(0.8 < x < 1.05 for x in lifts), lifts
    assert not any(math.isnan(x) for x in lifts)
