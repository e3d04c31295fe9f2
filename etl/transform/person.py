"""PERSON and DEATH from FHIR Patient.

| rule | destination | source | logic |
|---|---|---|---|
| P1 | person.person_id | Patient.id (pseudonym) | stable lineage id |
| P2 | person.gender_concept_id | Patient.gender | mappings (system http://hl7.org/fhir/administrative-gender); 0 if unmapped |
| P3 | year/month/day_of_birth, birth_datetime | Patient.birthDate | parts of the date |
| P4 | person.person_source_value | Patient.id | the keyed pseudonym, never the MRN |
| P5 | race_concept_id, ethnicity_concept_id | none | 0: FHIR core carries neither |
| D1 | death.death_date | Patient.deceasedDateTime | date part; death_type_concept_id = EHR |
"""
from __future__ import annotations

import datetime as dt

from etl.transform.context import MapContext
from etl.transform.fhirdata import to_date, to_datetime
from etl.vocabulary import NO_ROW

GENDER_SYSTEM = "http://hl7.org/fhir/administrative-gender"


def transform(patient: dict, ctx: MapContext) -> None:
    birth = to_date(patient.get("birthDate"))
    if birth is None:
        ctx.warnings["Patient without usable birthDate (person not created)"] += 1
        return
    person_id = ctx.ids.id("person", "Patient/" + patient["id"])
    ctx.persons[patient["id"]] = person_id
    gender = patient.get("gender") or ""
    mapping = ctx.codes.system_code(GENDER_SYSTEM, gender)
    if mapping is None:
        ctx.codes.unmapped[(GENDER_SYSTEM, gender, "Patient.gender", NO_ROW)] += 1
    else:
        ctx.codes.note_concept(mapping, "Patient.gender")
    ctx.add("person", {
        "person_id": person_id,
        "gender_concept_id": mapping.concept_id if mapping else 0,
        "year_of_birth": birth.year, "month_of_birth": birth.month, "day_of_birth": birth.day,
        "birth_datetime": dt.datetime.combine(birth, dt.time()),
        "race_concept_id": 0, "ethnicity_concept_id": 0,
        "person_source_value": patient["id"], "gender_source_value": gender[:50], "gender_source_concept_id": 0,
    })
    death = to_date(patient.get("deceasedDateTime"))
    if death:
        ctx.add("death", {
            "person_id": person_id, "death_date": death, "death_datetime": to_datetime(patient["deceasedDateTime"]),
            "death_type_concept_id": ctx.codes.convention("type_ehr"), "cause_concept_id": 0,
        })
        ctx.event(person_id, "death", death, None, "death", person_id, f"Patient/{patient['id']}#death")
    elif patient.get("deceasedBoolean") is True:
        ctx.warnings["Patient deceased without a date (no death row)"] += 1
