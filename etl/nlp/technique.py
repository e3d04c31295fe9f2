"""MRI technique from report text: was diffusion-weighted imaging done, was a hepatobiliary phase acquired?

DREAM analysed disappeared lesions only when the MRI had both (its "MRI protocol met"). Sites with structured
lesion facts send these as Observations (etl.lesions.facts, rule F6); a narrative-only site writes them in the
technique paragraph or lets them show in the findings ("restricted diffusion", "hypointense in the
hepatobiliary phase"). Rules:
  K1 a sequence named with a performance negation ("DWI not performed", "without diffusion-weighted imaging",
     "hepatobiliary phase: none", 拡散強調像なし, 肝細胞相は撮像せず) was not done
  K2 any other mention of the sequence or its contrast agent (gadoxetic acid, Gd-EOB-DTPA, Primovist, Eovist,
     EOB) means it was done; a finding read on it ("no restricted diffusion") still shows it was acquired
  K3 K1 wins over K2 within one report (a technique statement is explicit, findings are indirect); no mention
     at all leaves the sequence unknown (None)
"""
from __future__ import annotations

import re

_TERMS = {
    "mri_dwi": (r"diffusion[- ]?weighted(?:\s+(?:imaging|images?|sequences?|MRI|MR))?|\bDWI\b|\bDW-?MRI\b|"
                r"\bADC\b|apparent\s+diffusion|diffusion|拡散強調(?:像|画像)?|拡散"),
    "mri_hepatobiliary_phase": (r"hepato-?biliary(?:[- ]phase)?(?:\s+(?:imaging|images?|sequences?|acquisition))?|"
                                r"\bHBP\b|gadoxet\w*|Gd-?EOB(?:-?DTPA)?|EOB(?:-?MRI)?|Primovist|Eovist|"
                                r"肝細胞(?:造影)?相|EOB・プリモビスト|プリモビスト"),
}
_NOT_DONE_AFTER = re.compile(
    r"^\s*(?:\([^()]{0,40}\)\s*)?[\s:=]*(?:(?:was|were|is|are|has|have|had)\s+(?:been\s+)?)?(?:not\s+(?:performed|obtained|acquired|done|"
    r"available|included|given|administered|used|feasible|possible)|omitted|unavailable|none\b|n/a\b|\(-\))|"
    r"^\s*(?:は|が|を|も)?\s*(?::|：)?\s*(?:なし|無し|未施行|未撮像|施行せず|撮像せず|施行していない|撮像していない|"
    r"施行されていない|撮像されていない|行っていない|行わず|省略)", re.IGNORECASE)
_NOT_DONE_BEFORE = re.compile(r"(?:\bwithout|\bno|\bomitted|\bomission\s+of|\blacking|\babsent)\s+(?:a\s+|an\s+|the\s+)?$",
                              re.IGNORECASE)
_FINDING_AFTER = re.compile(r"^\s*(?:restrict\w*|signal|abnormalit\w*|hyper\w*|hypo\w*|imag\w*\s+shows?)", re.IGNORECASE)


def mri_technique(text: str) -> dict[str, bool | None]:
    """{"mri_dwi": ..., "mri_hepatobiliary_phase": ...}: True done, False not done, None not said (rules K1-K3)."""
    found: dict[str, bool | None] = {}
    for fact, pattern in _TERMS.items():
        done = not_done = False
        for hit in re.finditer(pattern, text or "", re.IGNORECASE):
            before, after = text[max(0, hit.start() - 24):hit.start()], text[hit.end():hit.end() + 40]
            negated_before = _NOT_DONE_BEFORE.search(before) and not _FINDING_AFTER.match(after)
            if _NOT_DONE_AFTER.match(after) or negated_before:
                not_done = True
            else:
                done = True
        found[fact] = False if not_done else True if done else None
    return found


def protocol_met(technique: dict[str, bool | None]) -> bool | None:
    """DREAM's MRI protocol from the technique (read from text, or the structured flags of etl.lesions.facts
    rule F6): True only when both were done, None when neither was said."""
    if all(v is None for v in technique.values()):
        return None
    return bool(technique.get("mri_dwi") and technique.get("mri_hepatobiliary_phase"))
