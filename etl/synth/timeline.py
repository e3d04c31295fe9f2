"""The latent clinical course of one synthetic patient, as plain dates and flags.

Why: every random draw that decides what *happened* (and so the truth) is made here, including which
records exist (nothing after death, nothing after loss to follow-up). ``resources.py`` only renders a
course and ``truth.py`` only reads it, so the FHIR output and truth.json cannot drift apart.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import date, timedelta

from . import codes
from .params import SynthParams
from .people import Person, make_person

DAYS_PER_MONTH = 30.4375  # the registry's month (docs/fhir_profile.md)

FIRST_DIAGNOSIS = date(2016, 3, 1)
LAST_RECORD = date(2023, 12, 31)
# Longest possible time from diagnosis to the last hepatectomy with the draws below (days).
_MAX_TO_T0 = 14 + 10 + 21 + 183 + 42 + 56 + 70

# Couinaud segment (CSV code suffix) -> relative weight, roughly by segment volume.
SEGMENT_WEIGHTS = {"1": 2, "2": 8, "3": 8, "4": 2, "4a": 6, "4b": 6, "5": 12, "6": 12, "7": 14, "8": 16}

REGIMENS = {
    "FOLFOX": ("fluorouracil", "leucovorin", "oxaliplatin"),
    "FOLFIRI": ("fluorouracil", "leucovorin", "irinotecan"),
    "CAPOX": ("capecitabine", "oxaliplatin"),
}
_REGIMEN_WEIGHTS = {"FOLFOX": 45, "FOLFIRI": 25, "CAPOX": 30}
# Anti-EGFR antibodies are combined with infusional regimens only.
_ALL_BIOLOGICS = ("bevacizumab", "cetuximab", "panitumumab")
_BIOLOGICS = {"FOLFOX": _ALL_BIOLOGICS, "FOLFIRI": _ALL_BIOLOGICS, "CAPOX": ("bevacizumab",)}

# Primary tumour site -> SNOMED codes (each must carry meaning primary_colorectal_cancer in the CSV).
PRIMARY_CODES = {"colon": ("93761005", "363406005"), "rectum": ("93984006", "363351006")}

NOT_DISAPPEARED = "not_disappeared"
CT_ONLY = "ct_disappeared_mri_visible"
CT_AND_MRI = "ct_and_mri_disappeared"


def months(days: int) -> float:
    return days / DAYS_PER_MONTH


def _after(d: date, lo: int, hi: int, rng: random.Random) -> date:
    return d + timedelta(days=rng.randint(lo, hi))


@dataclass
class Imaging:
    modality: str  # "ct" | "mri"
    phase: str  # "staging" | "baseline" | "post_chemo" | "follow_up"
    date: date
    dwi: bool = True
    hepatobiliary: bool = True


@dataclass
class Lesion:
    number: int  # 1-based within the patient, as in the reports
    segment: str
    baseline_ct_mm: int
    baseline_mri_mm: int
    post_ct_mm: int | None  # None = not visible
    post_mri_mm: int | None
    group: str
    residual: bool  # latent: cancer cells remain at the site after chemotherapy
    stage: int = 0  # index into Course.stages
    found_on_ious: bool | None = None  # DLMs only
    handling: str = "resected"  # resected | ablated | left_in_place
    pathology_viable: bool | None = None  # None = no viable-tumour observation recorded
    regrowth: date | None = None  # latent reappearance of a residual left-in-place/ablated DLM

    @property
    def is_dlm(self) -> bool:
        return self.group != NOT_DISAPPEARED


@dataclass
class Stage:
    date: date
    procedure_code: str
    ce_ious: bool
    pathology_date: date | None  # None = no pathology report recorded


@dataclass
class DrugCourse:
    drug: str
    start: date
    end: date


@dataclass
class Course:
    index: int
    person: Person
    cohort: bool
    primary_code: str | None  # None: no colorectal cancer Condition recorded (imaging only)
    primary_onset: date
    imaging: list[Imaging] = field(default_factory=list)  # before surgery
    diagnosis: date | None = None  # liver metastasis
    lesions: list[Lesion] = field(default_factory=list)
    regimen: str | None = None
    chemo_start: date | None = None
    chemo_end: date | None = None
    drugs: list[DrugCourse] = field(default_factory=list)
    stages: list[Stage] = field(default_factory=list)
    followups: list[date] = field(default_factory=list)  # follow-up CT dates after t0
    other_recurrence: date | None = None  # latent recurrence away from the DLM sites (None: after follow-up)
    recurrence: date | None = None  # detection date = recurrence Condition onset
    death: date | None = None  # recorded death

    @property
    def t0(self) -> date:
        """Time zero: the last hepatectomy (the completing stage of a two-stage resection)."""
        return self.stages[-1].date

    def last_contact(self) -> date:
        """Date of the latest dated record of the patient (including death)."""
        dates = [self.primary_onset, *(i.date for i in self.imaging)]
        if self.cohort:
            dates += [self.chemo_end, *(s.date for s in self.stages), *self.followups]
            dates += [s.pathology_date for s in self.stages if s.pathology_date]
            dates += [d for d in (self.recurrence, self.death) if d]
        return max(dates)


def simulate(rng: random.Random, params: SynthParams, index: int, mrn: str) -> Course:
    """Draw one patient's course: cohort (liver metastases) or not, from ``rng`` only."""
    if rng.random() < params.non_cohort_share:
        return _non_cohort(rng, index, mrn)
    return _cohort(rng, params, index, mrn)


def _diagnosis_date(rng: random.Random, followup_days: int) -> date:
    latest = LAST_RECORD - timedelta(days=_MAX_TO_T0 + followup_days)
    return FIRST_DIAGNOSIS + timedelta(days=rng.randint(0, max(0, (latest - FIRST_DIAGNOSIS).days)))


def _primary_code(rng: random.Random) -> str:
    return rng.choice(PRIMARY_CODES["colon" if rng.random() < 0.65 else "rectum"])


def _non_cohort(rng: random.Random, index: int, mrn: str) -> Course:
    """Colorectal cancer without liver metastasis; some patients have a staging CT only."""
    onset = _diagnosis_date(rng, 0)
    kind = rng.choice(("condition", "condition_and_ct", "ct_only"))
    course = Course(
        index=index,
        person=make_person(rng, mrn, onset),
        cohort=False,
        primary_code=None if kind == "ct_only" else _primary_code(rng),
        primary_onset=onset,
    )
    if kind != "condition":
        course.imaging.append(Imaging("ct", "staging", _after(onset, 3, 21, rng)))
    return course


def _mri(rng: random.Random, params: SynthParams, phase: str, when: date) -> Imaging:
    """An MRI study; DREAM's protocol (DWI and hepatobiliary phase) is sometimes incomplete."""
    study = Imaging("mri", phase, when)
    if rng.random() >= params.mri_protocol_met_share:
        study.dwi, study.hepatobiliary = rng.choice(((False, True), (True, False), (False, False)))
    return study


def _draw_lesion(rng: random.Random, params: SynthParams, number: int) -> Lesion:
    segment = rng.choices(tuple(SEGMENT_WEIGHTS), weights=tuple(SEGMENT_WEIGHTS.values()))[0]
    base_ct = rng.randint(5, 40)
    base_mri = min(40, max(5, base_ct + rng.randint(-2, 2)))
    if rng.random() < params.p_disappear_ct:
        if rng.random() < params.p_disappear_mri_given_ct:
            group, post_mri, npv = CT_AND_MRI, None, params.npv_ct_and_mri
        else:
            group, npv = CT_ONLY, params.npv_ct_only
            post_mri = max(3, round(base_mri * rng.uniform(0.15, 0.5)))
        residual = rng.random() >= npv
        post_ct = None
    else:
        group, residual = NOT_DISAPPEARED, True
        post_ct = max(3, round(base_ct * rng.uniform(0.3, 1.0)))
        # MRI is the more sensitive study; rarely it misses a lesion CT still shows.
        post_mri = None if rng.random() < 0.02 else max(3, post_ct + rng.randint(-2, 2))
    return Lesion(number, segment, base_ct, base_mri, post_ct, post_mri, group, residual)


def _cohort(rng: random.Random, params: SynthParams, index: int, mrn: str) -> Course:
    followup_days = math.floor(params.followup_months * DAYS_PER_MONTH)
    diagnosis = _diagnosis_date(rng, followup_days)
    course = Course(
        index=index,
        person=make_person(rng, mrn, diagnosis),
        cohort=True,
        primary_code=_primary_code(rng),
        primary_onset=diagnosis - timedelta(days=rng.randint(0, 45)),
        diagnosis=diagnosis,
    )
    course.lesions = [_draw_lesion(rng, params, k) for k in range(1, rng.randint(1, 6) + 1)]

    # Baseline imaging, then chemotherapy, then post-chemotherapy imaging 2-6 weeks after its end.
    base_ct = _after(diagnosis, 3, 14, rng)
    base_mri = _after(base_ct, 1, 10, rng)
    course.chemo_start = _after(base_mri, 7, 21, rng)
    course.chemo_end = _after(course.chemo_start, 61, 183, rng)
    course.regimen = rng.choices(tuple(_REGIMEN_WEIGHTS), weights=tuple(_REGIMEN_WEIGHTS.values()))[0]
    course.drugs = [DrugCourse(d, course.chemo_start, course.chemo_end) for d in REGIMENS[course.regimen]]
    if rng.random() < 0.5:
        biologic = rng.choice(_BIOLOGICS[course.regimen])
        # Bevacizumab is stopped some weeks before liver surgery (wound healing).
        stop = course.chemo_end - timedelta(days=rng.randint(14, 42) if biologic == "bevacizumab" else 0)
        course.drugs.append(DrugCourse(biologic, course.chemo_start, max(stop, course.chemo_start)))
    post_ct = _after(course.chemo_end, 14, 42, rng)
    post_mri = _after(course.chemo_end, 14, 42, rng)
    course.imaging = [
        Imaging("ct", "baseline", base_ct),
        _mri(rng, params, "baseline", base_mri),
        Imaging("ct", "post_chemo", post_ct),
        _mri(rng, params, "post_chemo", post_mri),
    ]

    _surgery(rng, params, course, max(post_ct, post_mri))
    _follow_up(rng, params, course, followup_days)
    return course


def _surgery(rng: random.Random, params: SynthParams, course: Course, last_imaging: date) -> None:
    """Hepatectomy (one or two stages), IOUS, per-lesion handling and pathology findings."""
    hepatectomy_codes = codes.codes("hepatectomy")
    ce = rng.random() < params.ce_ious_share
    first = _after(last_imaging, 21, 56, rng)
    course.stages = [Stage(first, rng.choice(hepatectomy_codes), ce, None)]
    n = len(course.lesions)
    if n >= 2 and rng.random() < params.two_stage_share:
        course.stages.append(Stage(_after(first, 42, 70, rng), rng.choice(hepatectomy_codes), ce, None))
        order = rng.sample(range(n), n)
        cut = rng.randint(1, n - 1)
        for position in order[cut:]:
            course.lesions[position].stage = 1

    leaves_dlms = rng.random() < params.left_in_place_share
    sensitivity = params.ious_sensitivity_ce if ce else params.ious_sensitivity
    for lesion in course.lesions:
        if not lesion.is_dlm:
            lesion.handling = "ablated" if rng.random() < params.ablation_share_visible else "resected"
            continue
        lesion.found_on_ious = rng.random() < (sensitivity if lesion.residual else params.ious_false_positive)
        if lesion.found_on_ious:
            lesion.handling = "resected"
        elif leaves_dlms:
            lesion.handling = "left_in_place"
        else:
            lesion.handling = "ablated" if rng.random() < params.ablation_share_dlm else "resected"

    # A pathology report 1-2 weeks after each stage that resected something.
    for number, stage in enumerate(course.stages):
        resected = [l for l in course.lesions if l.stage == number and l.handling == "resected"]
        if resected:
            stage.pathology_date = _after(stage.date, 7, 14, rng)
        for lesion in resected:
            missing = lesion.is_dlm and rng.random() < params.pathology_missing_share
            lesion.pathology_viable = None if missing else lesion.residual


def strategy(course: Course) -> str | None:
    """Surgical strategy of a patient with a CT-and-MRI DLM (docs/fhir_profile.md), else None."""
    dlms = [l for l in course.lesions if l.group == CT_AND_MRI]
    if not dlms:
        return None
    return "all_dlm_removed" if all(l.handling != "left_in_place" for l in dlms) else "dlm_left_behind"


def _follow_up(rng: random.Random, params: SynthParams, course: Course, followup_days: int) -> None:
    """Follow-up CT schedule, latent regrowth and recurrence, death and censoring after time zero."""
    t0 = course.t0
    ln2 = math.log(2)

    def within(median_months: float, horizon_days: int) -> date | None:
        """t0 + an exponential time with this median, or None when it falls after the horizon."""
        days = max(1, round(rng.expovariate(ln2 / median_months) * DAYS_PER_MONTH))
        return t0 + timedelta(days=days) if days <= horizon_days else None

    censor_days = followup_days
    if rng.random() < params.lost_to_followup_share:
        censor_days = min(censor_days, math.floor(rng.uniform(6, 20) * DAYS_PER_MONTH))
    censor = t0 + timedelta(days=censor_days)
    # A death after loss to follow-up or after the end of follow-up is never recorded.
    course.death = within(params.os_median_months, censor_days)

    # No record after death: a pathology report due after death is never written.
    for number, stage in enumerate(course.stages):
        if course.death and stage.pathology_date and stage.pathology_date >= course.death:
            stage.pathology_date = None
            for lesion in course.lesions:
                if lesion.stage == number:
                    lesion.pathology_viable = None

    interval = params.followup_interval_months * DAYS_PER_MONTH
    k = 1
    while k * interval <= followup_days + 7:
        when = t0 + timedelta(days=round(k * interval) + rng.randint(-7, 7))
        if when <= censor and (course.death is None or when < course.death):
            course.followups.append(when)
        k += 1

    earliest = []
    for lesion in course.lesions:
        if lesion.is_dlm and lesion.residual and lesion.handling != "resected":
            lesion.regrowth = t0 + timedelta(days=rng.randint(round(3 * DAYS_PER_MONTH), round(18 * DAYS_PER_MONTH)))
            earliest.append(lesion.regrowth)
    arm = strategy(course) or (
        "dlm_left_behind" if any(l.handling == "left_in_place" for l in course.lesions) else "all_dlm_removed"
    )
    median = (params.rfs_median_months_dlm_left_behind if arm == "dlm_left_behind"
              else params.rfs_median_months_all_dlm_removed)
    course.other_recurrence = within(median, followup_days)
    if course.other_recurrence:
        earliest.append(course.other_recurrence)
    if earliest:
        first = min(earliest)
        course.recurrence = next((d for d in course.followups if d >= first), None)
