from __future__ import annotations

from modelops.alias import HISTORY_MAX, AliasHistory


def test_parse_and_render_round_trip_ignoring_junk() -> None:
    history = AliasHistory.parse("1, 2,x,,3")
    assert history.versions == ["1", "2", "3"]
    assert AliasHistory.parse(history.render()) == history
    assert AliasHistory.parse(None).versions == [] and AliasHistory.parse("").versions == []


def test_a_move_remembers_the_previous_holder_and_is_bounded() -> None:
    history = AliasHistory()
    assert history.moved(None, "1").versions == []  # first promotion: nothing held it before
    assert history.moved("1", "1").versions == []  # not a move
    for version in range(1, HISTORY_MAX + 10):
        history = history.moved(str(version), str(version + 1))
    assert len(history.versions) == HISTORY_MAX and history.versions[-1] == str(HISTORY_MAX + 9)


def test_rollback_skips_the_current_holder_and_deleted_versions() -> None:
    history = AliasHistory(["1", "2", "3", "4"])
    deleted = {"3"}
    target, rest = history.rollback("4", lambda v: v not in deleted) or ("", AliasHistory())
    assert target == "2" and rest.versions == ["1"]
    assert AliasHistory(["5"]).rollback("5", lambda v: True) is None
    assert AliasHistory().rollback("1", lambda v: True) is None
