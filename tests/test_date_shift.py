"""Per-patient date shift (issue #10, `DLMREG_DATE_SHIFT_DAYS`): every date of a patient moves back by the
same keyed number of days, so calendar dates change while survival, lesion outcomes and NPV do not."""
from __future__ import annotations

from collections import defaultdict
from datetime import date

import pytest
import sqlalchemy as sa

from etl.pipeline import RunSettings, run
from etl.stage.deidentify import deidentify, shift_date
from etl.stage.pseudonym import Pseudonymizer


@pytest.mark.parametrize("value, days, expected", [
    ("2020-03-05", -10, "2020-02-24"),
    ("2020-03-05T10:11:12.5+02:00", -10, "2020-02-24T10:11:12.5+02:00"),
    ("2020-01-05", -10, "2019-12-26"),
    ("2020-03", -10, "2020-03"),          # a month moves from its middle
    ("2020-03", -20, "2020-02"),
    ("2020", -100, "2020"),               # a year too
    ("2020", -200, "2019"),
    ("not a date", -10, "not a date"),
    ("0001-01-01", -10, "0001-01-01"),    # would leave the calendar: kept
])
def test_shift_date(value, days, expected):
    assert shift_date(value, days) == expected


def test_shift_is_per_patient_keyed_and_spares_codes_and_meta():
    pseudo = Pseudonymizer("key", date_shift_days=30)
    shifts = {pseudo.date_shift(str(i)) for i in range(200)}
    assert shifts <= set(range(-30, 0)) and len(shifts) > 20
    assert Pseudonymizer("key", date_shift_days=30).date_shift("7") == pseudo.date_shift("7")
    assert Pseudonymizer("other", date_shift_days=30).date_shift("7") != pseudo.date_shift("7") or \
        Pseudonymizer("other", date_shift_days=30).date_shift("8") != pseudo.date_shift("8")
    assert Pseudonymizer("key").date_shift("7") == 0   # off by default
    days = pseudo.date_shift("p1")
    resource = {"resourceType": "Condition", "id": "c", "subject": {"reference": "Patient/p1"},
                "onsetDateTime": "2021-05-05", "recordedDate": "2021-05-06T08:00:00Z",
                "meta": {"lastUpdated": "2021-05-07T00:00:00Z"}, "code": {"coding": [{"code": "2020"}]},
                "stage": [{"assessment": [{"reference": "Observation/x"}]}], "note": [{"text": "2021-05-05"}]}
    clean = deidentify(resource, pseudo)
    assert clean["onsetDateTime"] == shift_date("2021-05-05", days) != "2021-05-05"
    assert clean["recordedDate"][:10] == shift_date("2021-05-06", days)
    assert clean["meta"] == resource["meta"] and clean["code"] == resource["code"]
    assert clean["note"] == resource["note"]   # free text is not a date element
    patient = deidentify({"resourceType": "Patient", "id": "p1", "birthDate": "1960-06-30"}, pseudo)
    assert patient["birthDate"] == shift_date("1960-06-30", days)


def _dates_and_outcomes(url: str) -> tuple[dict, dict, list]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        conditions = defaultdict(list)
        for person, start in conn.execute(sa.text(
                "SELECT p.person_source_value, c.condition_start_date FROM condition_occurrence c "
                "JOIN person p ON p.person_id = c.person_id ORDER BY 1, 2")):
            conditions[person].append(date.fromisoformat(str(start)[:10]))
        courses = {row[0]: tuple(row[1:]) for row in conn.execute(sa.text(
            "SELECT p.person_source_value, c.strategy, c.rfs_months, c.rfs_event, c.os_months, c.os_event "
            "FROM dlm_patient_course c JOIN person p ON p.person_id = c.person_id"))}
        outcomes = sorted(tuple(row) for row in conn.execute(sa.text(
            "SELECT p.person_source_value, l.liver_segment, o.dlm_group, o.outcome FROM dlm_lesion l "
            "JOIN dlm_lesion_outcome o ON o.lesion_id = l.lesion_id JOIN person p ON p.person_id = l.person_id")))
    engine.dispose()
    return dict(conditions), courses, outcomes


def test_shifted_registry_has_other_dates_and_the_same_survival_and_npv(cohort_factory, tmp_path, monkeypatch):
    source = cohort_factory(40, 17)
    plain, shifted = (f"sqlite:///{tmp_path / name}.sqlite" for name in ("plain", "shifted"))
    results = {"plain": run(RunSettings(source=str(source), registry_url=plain, out_dir=tmp_path / "o1",
                                        show_progress=False))}
    monkeypatch.setenv("DLMREG_DATE_SHIFT_DAYS", "90")
    results["shifted"] = run(RunSettings(source=str(source), registry_url=shifted, out_dir=tmp_path / "o2",
                                         show_progress=False))
    (dates_a, courses_a, outcomes_a), (dates_b, courses_b, outcomes_b) = map(_dates_and_outcomes, (plain, shifted))
    assert courses_a == courses_b and outcomes_a == outcomes_b and outcomes_a
    for key in ("npv", "npv_subgroups", "npv_sensitivity", "survival_by_surgical_strategy", "comparison",
                "lesion_flow"):
        assert results["plain"][key] == results["shifted"][key], key
    offsets = set()
    for person, starts in dates_a.items():
        moved = {(b - a).days for a, b in zip(starts, dates_b[person])}
        assert len(moved) == 1 and -90 <= next(iter(moved)) <= -1   # one shift per patient, backwards
        offsets |= moved
    assert len(offsets) > 10                                           # and patients differ

    # turning it off again restages and re-maps everyone: the registry is the plain one
    monkeypatch.delenv("DLMREG_DATE_SHIFT_DAYS")
    run(RunSettings(source=str(source), registry_url=shifted, out_dir=tmp_path / "o3", show_progress=False))
    assert _dates_and_outcomes(shifted)[0] == dates_a


def test_bad_setting_is_refused(monkeypatch):
    monkeypatch.setenv("DLMREG_DATE_SHIFT_DAYS", "-5")
    with pytest.raises(ValueError, match="DLMREG_DATE_SHIFT_DAYS"):
        Pseudonymizer("key")
