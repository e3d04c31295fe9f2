"""FHIR R4 resources (plain dicts) rendering one course in the shape of docs/fhir_profile.md.

Why plain dicts: a 10,000-patient cohort must render in seconds, so no pydantic models are built here
(the tests validate every resource with the fhir.resources R4B models). Ids are uuid5 of (seed,
patient index, resource type, counter): stable for a seed and unique per type. The only randomness
here is cosmetic (how a yes/no value is coded, the time of day of a note), drawn from its own stream
so that it never shifts the clinical course.
"""

from __future__ import annotations

import base64
import random
import uuid
from dataclasses import dataclass, field
from datetime import date

from . import narrative, narrative_ja
from .codes import coding, concept
from .params import SynthParams
from .people import MRN_SYSTEM
from .timeline import DAYS_PER_MONTH, Course, Imaging, Lesion

_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://dlm-registry.github.io/synth")
TUMOR_PROFILE = "http://hl7.org/fhir/us/mcode/StructureDefinition/mcode-tumor"
LESION_ID_SYSTEM = "http://hospital.example.org/tumor-id"
# The two structural codings not taken from mappings/fhir_codes.csv (the extractor reads neither):
# the organ of every lesion and the identifier type of the MRN.
MRN_TYPE = {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR",
            "display": "Medical record number"}
# Drugs without an RxNorm row in the mapping CSV are sent as text only, as many sites do.
TEXT_ONLY_DRUGS = frozenset({"leucovorin"})


@dataclass
class Rendered:
    """The resources of one patient, in order, and the ids truth.json needs.

    Resources share immutable parts (codings): serialise them, do not mutate them.
    """

    patient_id: str
    lesion_ids: dict[int, tuple[str, str]] = field(default_factory=dict)  # number -> (BodyStructure.id, identifier)
    resources: list[tuple[str, dict]] = field(default_factory=list)  # (resourceType, resource)


def render(course: Course, seed: int, params: SynthParams) -> Rendered:
    """All FHIR resources of one course (dates never after the recorded death)."""
    return _Renderer(course, seed, params).run()


def _text_attachment(text: str, title: str, language: str = "en") -> dict:
    return {"contentType": "text/plain", "language": language,
            "data": base64.b64encode(text.encode("utf-8")).decode(), "title": title}


class _Renderer:
    def __init__(self, course: Course, seed: int, params: SynthParams) -> None:
        self.course = course
        self.params = params
        self.key = f"{seed}:{course.index}"
        self.rng = random.Random(f"dlm-synth:{self.key}:render")
        self.counters: dict[str, int] = {}
        self.out = Rendered(patient_id=self._id("Patient"))
        self.subject = {"reference": f"Patient/{self.out.patient_id}"}
        self.focus: dict[int, dict] = {}  # lesion number -> BodyStructure reference
        # Narrative-only patients (their lesions exist only in the report texts) come from a stream of
        # their own, so that the share changes nothing else (the structured twin stays the same).
        self.text_rng = random.Random(f"dlm-synth:{self.key}:narrative")
        self.narrative_only = course.cohort and self.text_rng.random() < params.narrative_only_share
        self.language = "ja" if self.narrative_only and self.text_rng.random() < params.narrative_ja_share else "en"

    # -- plumbing -------------------------------------------------------------------------------
    def _id(self, resource_type: str) -> str:
        n = self.counters.get(resource_type, 0)
        self.counters[resource_type] = n + 1
        return str(uuid.uuid5(_NAMESPACE, f"{self.key}:{resource_type}:{n}"))

    def _add(self, resource_type: str, body: dict, resource_id: str | None = None) -> dict:
        resource = {"resourceType": resource_type, "id": resource_id or self._id(resource_type), **body}
        self.out.resources.append((resource_type, resource))
        return {"reference": f"{resource_type}/{resource['id']}"}

    def _observation(self, code: dict, when: date, value: dict, *, category: str, lesion: Lesion | None = None,
                     part_of: dict | None = None) -> dict | None:
        if lesion is not None and self.narrative_only:
            return None  # per-lesion facts are only in the texts
        body: dict = {"status": "final"}
        if part_of:
            body["partOf"] = [part_of]
        body["category"] = [{"text": category}]
        body["code"] = code
        body["subject"] = self.subject
        if lesion is not None:
            body["focus"] = [self.focus[lesion.number]]
        body["effectiveDateTime"] = when.isoformat()
        body.update(value)
        return self._add("Observation", body)

    def _yes_no(self, flag: bool) -> dict:
        if self.rng.random() < self.params.coded_value_share:
            return {"valueCodeableConcept": concept("value_true" if flag else "value_false")}
        return {"valueBoolean": flag}

    # -- the course, in time order ---------------------------------------------------------------
    def run(self) -> Rendered:
        c = self.course
        self._patient()
        if c.primary_code:
            self._add("Condition", {
                "code": concept("primary_colorectal_cancer", c.primary_code),
                "subject": self.subject,
                "onsetDateTime": c.primary_onset.isoformat(),
                "recordedDate": c.primary_onset.isoformat(),
            })
        if not c.cohort:
            for study in c.imaging:
                self._imaging(study, [], new_lesion=False)
        else:
            self._cohort()
        return self.out

    def _patient(self) -> None:
        p = self.course.person
        patient = {
            "identifier": [{"use": "usual", "type": {"coding": [MRN_TYPE]}, "system": MRN_SYSTEM, "value": p.mrn}],
            "name": [{"use": "official", "family": p.family, "given": [p.given]}],
            "gender": p.gender,
            "birthDate": p.birth_date.isoformat(),
            "address": [{"use": "home", "city": p.city, "country": p.country}],
        }
        if self.course.death:
            patient["deceasedDateTime"] = self.course.death.isoformat()
        self._add("Patient", patient, self.out.patient_id)

    def _cohort(self) -> None:
        c = self.course
        metastasis = self._add("Condition", {
            "code": concept("liver_metastasis"),
            "subject": self.subject,
            "onsetDateTime": c.diagnosis.isoformat(),
            "recordedDate": c.diagnosis.isoformat(),
        })
        for lesion in c.lesions:
            self._body_structure(lesion)
        self._pre_surgery_imaging("baseline")
        self._chemotherapy(metastasis)
        self._pre_surgery_imaging("post_chemo")
        for number in range(len(c.stages)):
            self._surgery(number, metastasis)
        tracked = [l for l in c.lesions if l.is_dlm and l.handling != "resected"]
        for when in c.followups:
            sizes = [(l, self._regrowth_mm(l, when)) for l in tracked]
            elsewhere = c.other_recurrence is not None and c.other_recurrence <= when
            self._imaging(Imaging("ct", "follow_up", when), sizes, new_lesion=elsewhere)
        if c.recurrence:
            self._add("Condition", {
                "clinicalStatus": concept("recurrence_status", "recurrence"),
                "code": concept("liver_metastasis"),
                "subject": self.subject,
                "onsetDateTime": c.recurrence.isoformat(),
                "recordedDate": c.recurrence.isoformat(),
            })

    def _pre_surgery_imaging(self, phase: str) -> None:
        for study in self.course.imaging:
            if study.phase == phase:
                self._imaging(study, [(l, self._size_on(l, study)) for l in self.course.lesions], new_lesion=False)

    @staticmethod
    def _size_on(lesion: Lesion, study: Imaging) -> int | None:
        if study.phase == "baseline":
            return lesion.baseline_ct_mm if study.modality == "ct" else lesion.baseline_mri_mm
        return lesion.post_ct_mm if study.modality == "ct" else lesion.post_mri_mm

    @staticmethod
    def _regrowth_mm(lesion: Lesion, when: date) -> int | None:
        if lesion.regrowth is None or when < lesion.regrowth:
            return None
        return min(60, 5 + round(2 * (when - lesion.regrowth).days / DAYS_PER_MONTH))

    def _body_structure(self, lesion: Lesion) -> None:
        if self.narrative_only:
            return
        identifier = "TUM-" + uuid.uuid5(_NAMESPACE, f"{self.key}:lesion:{lesion.number}").hex[:16].upper()
        label = narrative.segment_label(lesion.segment)
        ref = self._add("BodyStructure", {
            "meta": {"profile": [TUMOR_PROFILE]},
            "identifier": [{"use": "usual", "system": LESION_ID_SYSTEM, "value": identifier}],
            "active": True,
            "description": f"Liver metastasis {lesion.number}, {label}, {lesion.baseline_ct_mm} mm at baseline CT",
            "location": {"coding": [coding("liver")]},
            "locationQualifier": [concept(f"liver_segment_{lesion.segment}", text=label)],
            "patient": self.subject,
        })
        self.focus[lesion.number] = ref
        self.out.lesion_ids[lesion.number] = (ref["reference"].split("/", 1)[1], identifier)

    def _imaging(self, study: Imaging, sizes: list[tuple[Lesion, int | None]], new_lesion: bool) -> None:
        results = []
        for lesion, mm in sizes:
            results.append(self._observation(concept("lesion_visible"), study.date, self._yes_no(mm is not None),
                                             category="imaging", lesion=lesion))
            if mm is not None:
                results.append(self._observation(
                    concept("lesion_size", "21889-1"), study.date,
                    {"valueQuantity": {"value": mm, "unit": "mm", "system": coding("unit_mm")["system"],
                                       "code": coding("unit_mm")["code"]}},
                    category="imaging", lesion=lesion))
        if study.modality == "mri":
            results.append(self._observation(concept("mri_dwi"), study.date, {"valueBoolean": study.dwi},
                                             category="imaging"))
            results.append(self._observation(concept("mri_hepatobiliary_phase"), study.date,
                                             {"valueBoolean": study.hepatobiliary}, category="imaging"))
        conclusion, text = narrative.imaging(study, sizes, new_lesion)
        if self.language == "ja":
            text = narrative_ja.imaging(study, sizes, new_lesion, self.text_rng.randrange(6))
            conclusion = text.rsplit("診断: ", 1)[1].strip()
        results = [r for r in results if r is not None]
        body: dict = {
            "status": "final",
            "category": [{"text": "Radiology"}],
            "code": concept("imaging_ct" if study.modality == "ct" else "imaging_mri"),
            "subject": self.subject,
            "effectiveDateTime": study.date.isoformat(),
        }
        if results:
            body["result"] = results
        body["conclusion"] = conclusion
        body["presentedForm"] = [_text_attachment(text, f"{study.modality.upper()} report {study.date.isoformat()}",
                                                  self.language)]
        self._add("DiagnosticReport", body)

    def _chemotherapy(self, reason: dict) -> None:
        c = self.course
        procedure = self._add("Procedure", {
            "status": "completed",
            "code": concept("chemotherapy", "367336001", text=f"{c.regimen} chemotherapy"),
            "subject": self.subject,
            "performedPeriod": {"start": c.chemo_start.isoformat(), "end": c.chemo_end.isoformat()},
            "reasonReference": [reason],
        })
        for drug in c.drugs:
            medication = ({"text": drug.drug} if drug.drug in TEXT_ONLY_DRUGS
                          else concept("chemotherapy_drug", display=drug.drug, text=drug.drug))
            self._add("MedicationAdministration", {
                "status": "completed",
                "medicationCodeableConcept": medication,
                "subject": self.subject,
                "partOf": [procedure],
                "effectivePeriod": {"start": drug.start.isoformat(), "end": drug.end.isoformat()},
                "reasonReference": [reason],
            })

    def _surgery(self, number: int, reason: dict) -> None:
        c = self.course
        stage = c.stages[number]
        lesions = [l for l in c.lesions if l.stage == number]
        when = stage.date.isoformat()
        hepatectomy_code = concept("hepatectomy", stage.procedure_code)
        hepatectomy = self._add("Procedure", {
            "status": "completed",
            "code": hepatectomy_code,
            "subject": self.subject,
            "performedDateTime": when,
            "reasonReference": [reason],
        })
        ious = self._add("Procedure", {
            "status": "completed",
            "partOf": [hepatectomy],
            "code": concept("ce_ious" if stage.ce_ious else "ious"),
            "subject": self.subject,
            "performedDateTime": when,
        })
        for lesion in lesions:
            if lesion.is_dlm:
                self._observation(concept("found_on_ious"), stage.date, {"valueBoolean": lesion.found_on_ious},
                                  category="procedure", lesion=lesion, part_of=ious)
            self._observation(concept("lesion_handling"), stage.date,
                              {"valueCodeableConcept": concept(f"handling_{lesion.handling}")},
                              category="procedure", lesion=lesion, part_of=hepatectomy)
        text = narrative.operative_note(stage.date, hepatectomy_code["coding"][0]["display"], number,
                                        len(c.stages), stage.ce_ious, lesions)
        if self.language == "ja":
            text = narrative_ja.operative_note(stage.date, hepatectomy_code["coding"][0]["display"], number,
                                               len(c.stages), stage.ce_ious, lesions, self.text_rng.randrange(6))
        self._add("DocumentReference", {
            "status": "current",
            "docStatus": "final",
            "type": concept("operative_note"),
            "subject": self.subject,
            "date": f"{when}T{self.rng.randint(12, 19):02d}:{self.rng.randint(0, 59):02d}:00Z",
            "content": [{"attachment": _text_attachment(text, f"Operative note {when}", self.language)}],
            "context": {"related": [hepatectomy]},
        })
        if stage.pathology_date:
            self._pathology(stage.pathology_date, stage.date, [l for l in lesions if l.handling == "resected"])

    def _pathology(self, when: date, surgery: date, resected: list[Lesion]) -> None:
        results = [
            self._observation(concept("viable_tumor"), when, {"valueBoolean": lesion.pathology_viable},
                              category="laboratory", lesion=lesion)
            for lesion in resected if lesion.pathology_viable is not None
        ]
        results = [r for r in results if r is not None]
        conclusion, text = narrative.pathology(when, surgery, resected)
        if self.language == "ja":
            text = narrative_ja.pathology(when, surgery, resected, self.text_rng.randrange(6))
            conclusion = "上記の通り。"
        body: dict = {
            "status": "final",
            "category": [{"text": "Pathology"}],
            "code": concept("pathology_report"),
            "subject": self.subject,
            "effectiveDateTime": when.isoformat(),
        }
        if results:
            body["result"] = results
        body["conclusion"] = conclusion
        body["presentedForm"] = [_text_attachment(text, f"Pathology report {when.isoformat()}", self.language)]
        self._add("DiagnosticReport", body)
