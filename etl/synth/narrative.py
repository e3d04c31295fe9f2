"""Readable English report texts (imaging, operative note, pathology) for a course.

Why: real sites send narrative alongside (or instead of) structured data; every structured per-lesion
fact is also written here, by lesion number and Couinaud segment, so narrative extraction can be
checked against the same truth. Texts state only what the structured data states.
"""

from __future__ import annotations

from datetime import date

from .timeline import CT_AND_MRI, CT_ONLY, Imaging, Lesion

_ROMAN = {"1": "I", "2": "II", "3": "III", "4": "IV", "4a": "IVa", "4b": "IVb", "5": "V", "6": "VI", "7": "VII",
          "8": "VIII"}
_TITLE = {"ct": "CT CHEST AND ABDOMEN WITH CONTRAST", "mri": "MRI LIVER WITH CONTRAST"}
_INDICATION = {
    "staging": "Staging of colorectal cancer.",
    "baseline": "Colorectal liver metastases; baseline before chemotherapy.",
    "post_chemo": "Colorectal liver metastases; restaging after chemotherapy, before hepatectomy.",
    "follow_up": "Surveillance after hepatectomy for colorectal liver metastases.",
}
_GROUP_TEXT = {
    CT_AND_MRI: "disappeared on preoperative CT and MRI",
    CT_ONLY: "disappeared on preoperative CT, visible on MRI",
}
_HANDLING_TEXT = {"resected": "resected", "ablated": "ablated (radiofrequency)", "left_in_place": "left in place"}


def segment_label(segment: str) -> str:
    """Couinaud segment as written in reports, e.g. "segment VII"."""
    return f"segment {_ROMAN[segment]}"


def _lesion(lesion: Lesion) -> str:
    return f"Lesion {lesion.number}, {segment_label(lesion.segment)}"


def _numbers(lesions: list[Lesion]) -> str:
    return ", ".join(f"{l.number} ({segment_label(l.segment)})" for l in lesions)


def _sentence(parts: list[str]) -> str:
    text = "; ".join(parts) + "."
    return text[0].upper() + text[1:]


def _document(title: str, when: date, body: list[str], conclusion: str) -> str:
    return "\n".join([title, f"Date: {when.isoformat()}", *body, f"Conclusion: {conclusion}", ""])


def imaging(study: Imaging, sizes: list[tuple[Lesion, int | None]], new_lesion: bool) -> tuple[str, str]:
    """(conclusion, full text) of an imaging report.

    ``sizes``: per tracked lesion, its size in mm on this study or None when not visible (at follow-up:
    the left-in-place or ablated DLM sites); ``new_lesion``: a recurrence away from those sites.
    """
    body = [f"Indication: {_INDICATION[study.phase]}"]
    if study.modality == "mri":
        body.append(
            "Technique: diffusion-weighted imaging " + ("performed" if study.dwi else "not performed")
            + "; hepatobiliary phase (gadoxetic acid) " + ("performed" if study.hepatobiliary else "not performed")
            + "."
        )
    body.append("Findings:")
    visible = [l for l, mm in sizes if mm is not None]
    gone = [l for l, mm in sizes if mm is None]
    for lesion, mm in sizes:
        if study.phase == "follow_up":
            site = f"  Site of lesion {lesion.number}, {segment_label(lesion.segment)} " \
                   f"({_HANDLING_TEXT[lesion.handling]} at surgery): "
            body.append(site + (f"new {mm} mm lesion, consistent with local recurrence." if mm is not None
                                else "no lesion."))
            continue
        baseline = lesion.baseline_ct_mm if study.modality == "ct" else lesion.baseline_mri_mm
        before = f" (baseline {baseline} mm)" if study.phase != "baseline" else ""
        body.append(f"  {_lesion(lesion)}: " + (f"{mm} mm{before}." if mm is not None else f"not visible{before}."))
    if new_lesion:
        body.append("  New liver lesion away from the previously treated sites, suspicious for recurrence.")
    if not sizes and not new_lesion:
        body.append("  No focal liver lesion.")

    if study.phase == "staging":
        conclusion = "No liver metastasis."
    elif study.phase == "baseline":
        largest = max(mm for _, mm in sizes)
        conclusion = f"{len(sizes)} liver metastas{'is' if len(sizes) == 1 else 'es'}; largest {largest} mm."
    elif study.phase == "post_chemo":
        if len(sizes) == 1:
            conclusion = "The known liver metastasis " + ("remains visible." if visible else "is no longer visible.")
        elif not gone:
            conclusion = f"All {len(sizes)} known liver metastases remain visible."
        elif not visible:
            conclusion = f"None of the {len(sizes)} known liver metastases is visible."
        else:
            conclusion = f"{len(visible)} of {len(sizes)} known liver metastases visible; not visible: lesion " \
                         f"{_numbers(gone)}."
    else:
        findings = []
        if visible:
            findings.append(f"recurrence at the site of lesion {_numbers(visible)}")
        if new_lesion:
            findings.append("suspected new liver metastasis")
        conclusion = _sentence(findings) if findings else "No evidence of recurrence."
    return conclusion, _document(_TITLE[study.modality], study.date, body, conclusion)


def operative_note(when: date, procedure: str, stage: int, stages: int, ce_ious: bool,
                   lesions: list[Lesion]) -> str:
    """Operative note text: procedure, IOUS type and what was done to each lesion of this stage."""
    staged = f" (stage {stage + 1} of a two-stage hepatectomy)" if stages > 1 else ""
    body = [
        f"Procedure: {procedure}{staged}.",
        "Intraoperative ultrasound: " + ("contrast-enhanced (CE-IOUS)." if ce_ious else "conventional B-mode."),
        "Lesions:",
    ]
    for lesion in lesions:
        if lesion.is_dlm:
            found = "identified on IOUS" if lesion.found_on_ious else "not identified on IOUS"
            body.append(f"  {_lesion(lesion)} ({_GROUP_TEXT[lesion.group]}): {found}; "
                        f"{_HANDLING_TEXT[lesion.handling]}.")
        else:
            body.append(f"  {_lesion(lesion)} (visible on preoperative imaging): {_HANDLING_TEXT[lesion.handling]}.")
    counts = {h: sum(l.handling == h for l in lesions) for h in _HANDLING_TEXT}
    summary = ", ".join(f"{n} {_HANDLING_TEXT[h]}" for h, n in counts.items() if n)
    return _document("OPERATIVE NOTE", when, body, f"{len(lesions)} lesion(s): {summary}.")


def pathology(when: date, surgery: date, lesions: list[Lesion]) -> tuple[str, str]:
    """(conclusion, full text) of the pathology report of one resection specimen."""
    body = [f"Specimen: liver resection of {surgery.isoformat()}.", "Microscopy:"]
    viable, clear, unknown = [], [], []
    for lesion in lesions:
        if lesion.pathology_viable is None:
            unknown.append(lesion)
            body.append(f"  {_lesion(lesion)}: lesion site not identified in the specimen; not assessable.")
        elif lesion.pathology_viable:
            viable.append(lesion)
            body.append(f"  {_lesion(lesion)}: viable adenocarcinoma, consistent with colorectal metastasis.")
        else:
            clear.append(lesion)
            body.append(f"  {_lesion(lesion)}: no viable tumour cells; fibrosis at the lesion site.")
    parts = []
    if viable:
        parts.append(f"viable metastatic adenocarcinoma in lesion {_numbers(viable)}")
    if clear:
        parts.append(f"no viable tumour in lesion {_numbers(clear)}")
    if unknown:
        parts.append(f"lesion {_numbers(unknown)} not assessable")
    conclusion = _sentence(parts)
    return conclusion, _document("PATHOLOGY REPORT", when, body, conclusion)
