"""In-memory resource store, server clock and FHIR date handling for the FHIR TEST server.

Not for production use. All methods expect the caller to hold ``Store.lock``.
"""
from __future__ import annotations

import calendar
import copy
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

MS = timedelta(milliseconds=1)

R4_RESOURCE_TYPES = frozenset("""
Account ActivityDefinition AdverseEvent AllergyIntolerance Appointment AppointmentResponse AuditEvent Basic Binary
BiologicallyDerivedProduct BodyStructure Bundle CapabilityStatement CarePlan CareTeam CatalogEntry ChargeItem
ChargeItemDefinition Claim ClaimResponse ClinicalImpression CodeSystem Communication CommunicationRequest
CompartmentDefinition Composition ConceptMap Condition Consent Contract Coverage CoverageEligibilityRequest
CoverageEligibilityResponse DetectedIssue Device DeviceDefinition DeviceMetric DeviceRequest DeviceUseStatement
DiagnosticReport DocumentManifest DocumentReference EffectEvidenceSynthesis Encounter Endpoint EnrollmentRequest
EnrollmentResponse EpisodeOfCare EventDefinition Evidence EvidenceVariable ExampleScenario ExplanationOfBenefit
FamilyMemberHistory Flag Goal GraphDefinition Group GuidanceResponse HealthcareService ImagingStudy Immunization
ImmunizationEvaluation ImmunizationRecommendation ImplementationGuide InsurancePlan Invoice Library Linkage List
Location Measure MeasureReport Media Medication MedicationAdministration MedicationDispense MedicationKnowledge
MedicationRequest MedicationStatement MedicinalProduct MedicinalProductAuthorization MedicinalProductContraindication
MedicinalProductIndication MedicinalProductIngredient MedicinalProductInteraction MedicinalProductManufactured
MedicinalProductPackaged MedicinalProductPharmaceutical MedicinalProductUndesirableEffect MessageDefinition
MessageHeader MolecularSequence NamingSystem NutritionOrder Observation ObservationDefinition OperationDefinition
OperationOutcome Organization OrganizationAffiliation Parameters Patient PaymentNotice PaymentReconciliation Person
PlanDefinition Practitioner PractitionerRole Procedure Provenance Questionnaire QuestionnaireResponse RelatedPerson
RequestGroup ResearchDefinition ResearchElementDefinition ResearchStudy ResearchSubject RiskAssessment
RiskEvidenceSynthesis Schedule SearchParameter ServiceRequest Slot Specimen SpecimenDefinition StructureDefinition
StructureMap Subscription Substance SubstanceNucleicAcid SubstancePolymer SubstanceProtein
SubstanceReferenceInformation SubstanceSourceMaterial SubstanceSpecification SupplyDelivery SupplyRequest Task
TerminologyCapabilities TestReport TestScript ValueSet VerificationResult VisionPrescription
""".split())

_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_DATE = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d+))?)?(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$")


def utc(dt: datetime) -> datetime:
    """An aware UTC datetime (naive values are taken to be UTC)."""
    if dt.tzinfo is None:
        return dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc)


def to_ms(dt: datetime) -> datetime:
    dt = utc(dt)
    return dt.replace(microsecond=dt.microsecond // 1000 * 1000)


def format_instant(dt: datetime) -> str:
    """``2024-05-01T10:00:00.123+00:00``."""
    dt = utc(dt)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}+00:00"


def parse_fhir_datetime(value: str) -> tuple[datetime, datetime]:
    """The interval ``[low, high)`` covered by a FHIR date/dateTime/instant at its precision.

    Raises ValueError for malformed values and for times without a time zone.
    """
    if " " in value:
        raise ValueError(f"invalid date/time {value!r} (a '+' in a query string must be encoded as %2B)")
    m = _DATE.match(value)
    if not m:
        raise ValueError(f"invalid date/time {value!r}")
    g = m.groupdict()
    if g["H"] is not None and g["tz"] is None:
        raise ValueError(f"date/time {value!r} has a time but no time zone")
    try:
        year = int(g["y"])
        month = int(g["m"] or 1)
        day = int(g["d"] or 1)
        tz = timezone.utc
        if g["tz"] and g["tz"] != "Z":
            sign = 1 if g["tz"][0] == "+" else -1
            hours, minutes = int(g["tz"][1:3]), int(g["tz"][4:6])
            tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
        frac = g["f"] or ""
        micro = int((frac + "000000")[:6]) if frac else 0
        low = datetime(year, month, day, int(g["H"] or 0), int(g["M"] or 0), int(g["S"] or 0), micro, tzinfo=tz)
    except ValueError as exc:
        raise ValueError(f"invalid date/time {value!r}: {exc}") from None
    if g["m"] is None:
        high = low.replace(year=year + 1)
    elif g["d"] is None:
        high = low + timedelta(days=calendar.monthrange(year, month)[1])
    elif g["H"] is None:
        high = low + timedelta(days=1)
    elif g["S"] is None:
        high = low + timedelta(minutes=1)
    elif not frac:
        high = low + timedelta(seconds=1)
    else:
        high = low + timedelta(microseconds=10 ** max(0, 6 - len(frac)))
    return utc(low), utc(high)


def reference_key(reference: str | None) -> tuple[str, str] | None:
    """``("Patient", "123")`` from ``Patient/123``, ``http://x/fhir/Patient/123/_history/2`` etc."""
    if not reference or not isinstance(reference, str):
        return None
    parts = [p for p in reference.split("?")[0].split("/") if p]
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) < 2:
        return None
    return parts[-2], parts[-1]


def patient_refs(resource: dict) -> set[str]:
    """Patient ids a resource belongs to (itself for a Patient, else ``subject``/``patient``)."""
    if resource.get("resourceType") == "Patient":
        return {resource.get("id")}
    out = set()
    for name in ("subject", "patient"):
        ref = resource.get(name)
        if isinstance(ref, dict):
            key = reference_key(ref.get("reference"))
            if key and key[0] == "Patient":
                out.add(key[1])
    return out


@dataclass
class Version:
    version: int
    at: datetime
    resource: dict | None  # None: a deletion


@dataclass
class Record:
    type: str
    id: str
    versions: list[Version] = field(default_factory=list)

    @property
    def current(self) -> Version:
        return self.versions[-1]

    @property
    def deleted(self) -> bool:
        return self.current.resource is None

    @property
    def last_updated(self) -> datetime:
        return self.current.at

    @property
    def last_content(self) -> dict | None:
        for v in reversed(self.versions):
            if v.resource is not None:
                return v.resource
        return None

    def sort_key(self):
        return (self.last_updated, self.id)


class Store:
    """Resources by type and id, with full version history; one re-entrant lock guards everything."""

    def __init__(self, clock: Callable[[], datetime]):
        self.lock = threading.RLock()
        self.clock = clock
        self.records: dict[str, dict[str, Record]] = {}
        self._last_issued: datetime | None = None

    # -- clock ----------------------------------------------------------------------------------
    def now(self) -> datetime:
        """The raw server clock (UTC, ms precision); used for token lifetimes and JWT checks."""
        return to_ms(self.clock())

    def stamp(self) -> datetime:
        """A new, strictly increasing timestamp for meta.lastUpdated and deletions."""
        t = self.now()
        if self._last_issued is not None and t <= self._last_issued:
            t = self._last_issued + MS
        self._last_issued = t
        return t

    def transaction_time(self) -> datetime:
        """A time >= every stamp issued so far; later stamps are strictly greater."""
        t = self.now()
        if self._last_issued is not None and t < self._last_issued:
            t = self._last_issued
        self._last_issued = t
        return t

    # -- changes --------------------------------------------------------------------------------
    def upsert(self, resource: dict, owned: bool = False) -> dict | None:
        """Store a new version; returns a copy of it. `owned`: the caller hands the resource over (nobody else
        holds it, as a line just parsed): stored as it is, and nothing returned."""
        if not isinstance(resource, dict):
            raise TypeError("resource must be a dict")
        rtype = resource.get("resourceType")
        if rtype not in R4_RESOURCE_TYPES:
            raise ValueError(f"not an R4 resource type: {rtype!r}")
        res = resource if owned else copy.deepcopy(resource)
        rid = res.get("id") or str(uuid.uuid4())
        if not isinstance(rid, str) or not _ID.match(rid):
            raise ValueError(f"invalid resource id {rid!r}")
        res["id"] = rid
        record = self.records.setdefault(rtype, {}).get(rid)
        if record is None:
            record = self.records[rtype][rid] = Record(rtype, rid)
        version = (record.versions[-1].version + 1) if record.versions else 1
        at = self.stamp()
        meta = dict(res.get("meta") or {})
        meta["versionId"] = str(version)
        meta["lastUpdated"] = format_instant(at)
        res["meta"] = meta
        record.versions.append(Version(version, at, res))
        return None if owned else copy.deepcopy(res)

    def delete(self, rtype: str, rid: str) -> datetime:
        record = self.records.get(rtype, {}).get(rid)
        if record is None:
            raise KeyError(f"{rtype}/{rid} does not exist")
        if record.deleted:
            return record.current.at
        at = self.stamp()
        record.versions.append(Version(record.current.version + 1, at, None))
        return at

    # -- queries --------------------------------------------------------------------------------
    def get(self, rtype: str, rid: str) -> Record | None:
        return self.records.get(rtype, {}).get(rid)

    def types_held(self) -> list[str]:
        return sorted(t for t, recs in self.records.items() if any(not r.deleted for r in recs.values()))

    def all_records(self, rtype: str) -> list[Record]:
        return sorted(self.records.get(rtype, {}).values(), key=Record.sort_key)
