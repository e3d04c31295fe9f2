"""Domain routing: the OMOP table of a clinical statement follows the domain of its mapped concept
(as the HL7 FHIR-to-OMOP IG does), not the FHIR resource type. A Condition coded with an
Observation-domain concept becomes an OBSERVATION row, a Procedure code in the Measurement domain a
MEASUREMENT row. Unmapped codes (and rows of other domains) stay in the resource type's default table.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from etl.transform.context import MapContext
from etl.vocabulary import Mapping


@dataclass
class Fact:
    """One dated statement about a person, before it is given a table."""

    key: str                               # FHIR source key, e.g. "Condition/123"
    person_id: int
    mapping: Mapping | None
    source: str                            # source value kept when the concept is 0
    start: dt.date
    end: dt.date | None = None
    start_text: str | None = None          # the FHIR dateTime, for the *_datetime columns
    type_meaning: str = "type_ehr"         # omop_conventions meaning of the record's type concept
    value: dict = field(default_factory=lambda: {"boolean": None, "meaning": None, "number": None, "unit": None,
                                                 "text": None})
    event_id: int | None = None            # the procedure_occurrence this fact belongs to, if any
    extra: dict = field(default_factory=dict)  # table-specific columns (e.g. condition status)

    @property
    def concept_id(self) -> int:
        return self.mapping.concept_id if self.mapping else 0


def route(fact: Fact, default_domain: str, ctx: MapContext) -> tuple[str, int]:
    """Write `fact` to the table of its concept's domain; returns (table, row id)."""
    from etl.transform import condition_occurrence, drug_exposure, measurement, observation, procedure_occurrence

    builders = {"Condition": condition_occurrence.row, "Procedure": procedure_occurrence.row,
                "Drug": drug_exposure.row, "Measurement": measurement.row, "Observation": observation.row}
    domain = fact.mapping.domain if fact.mapping and fact.mapping.domain in builders else default_domain
    return builders[domain](fact, ctx)
