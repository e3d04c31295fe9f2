"""English lexicons: finding triggers per report kind and the context cues (negation, hedging, history).

A trigger is (regex, finding, flags). Flags:
  weak    only used when no ordinary trigger speaks about the lesion ("lesion", "nodule", a bare size)
  noflip  a negation cue does not reverse it ("no change" / "no significant growth" still mean visible)
Patterns are matched case-insensitively between non-letters; when two overlap the longer one wins, so
"not visible" beats "visible" and "not resected" beats "resected".
"""
from __future__ import annotations

_SEEN = (r"seen|visible|identified|identifiable|detected|detectable|demonstrated|apparent|evident|discernible|"
         r"appreciable|appreciated|delineated|depicted|shown|visuali[sz]ed|observed|present(?!\s+(?:study|exam\w*|scan|CT|MRI|imaging))|recogni[sz]able|"
         r"conspicuous|demonstrable|perceptible")
IOUS = (r"(?:(?:contrast[- ]enhanced|laparoscopic|intra-?operative|CE[- ]?)\s*)*(?:IOUS|LUS|CE-?IOUS|CEIOUS|"
         r"intra-?operative\s+(?:ultrasound|ultrasonography|sonography|US)|ultrasound|ultrasonography)")
_NEG_SEEN = rf"(?:not|never|n't)\s+(?:be\s+|been\s+|clearly\s+|definitely\s+|reliably\s+|confidently\s+|well\s+)*(?:{_SEEN})"

IMAGING = (
    # not visible: the lesion is gone on this study
    (rf"no\s+longer\s+(?:be\s+)?(?:clearly\s+)?(?:{_SEEN})", "not_visible", ""),
    (_NEG_SEEN, "not_visible", ""),
    (r"(?:cannot|can't|could\s+not|couldn't)\s+(?:be\s+)?(?:clearly\s+|definitely\s+|reliably\s+)?"
     r"(?:seen|identified|detected|visuali[sz]ed|delineated|demonstrated|appreciated|depicted|found|located)", "not_visible", ""),
    (r"disappear\w*|vanish\w*|resolved|resolution|complete(?:ly)?\s+(?:radiolog\w*\s+|imaging\s+|metabolic\s+)?"
     r"(?:response|resolution|regression|disappearance)|complete(?:ly)?\s+resolved|\bCR\b|invisible|undetectable|"
     r"non-?visuali[sz]ed|absent|gone|no\s+(?:residual\s+|focal\s+|discrete\s+)?(?:abnormality|lesion|focus)\s+"
     r"(?:is\s+)?(?:seen|identified|visible|detected)|(?:is|are|was|were)\s+occult|occult|DLM|"
     r"disappearing|no\s+(?:residual\s+|focal\s+|discrete\s+|definite\s+|visible\s+|new\s+|measurable\s+)?"
     r"(?:lesions?|abnormalit(?:y|ies)|masses|mass|nodules?|focus|foci|tumou?r)", "not_visible", ""),
    # visible: present now, whatever its course
    (r"(?:remains?|still|again|clearly|persistently)\s+(?:be\s+)?(?:" + _SEEN + r")|" + _SEEN, "visible", ""),
    # ... a negation makes these absent ("no residual lesion in S7", "no new lesions")
    (r"persist\w*|residual|remain(?:s|ing)?|new|newly|measur\w*|equivocal|indeterminate|suspicious|suspected|"
     r"consistent\s+with|compatible\s+with|in\s+keeping\s+with|representing|faint(?:ly)?|subtle|"
     r"restrict\w*\s+diffusion|diffusion\s+restriction|hypo-?intense|hyper-?intense|hypo-?(?:dense|attenuating)|"
     r"rim[- ]enhanc\w*|enhanc\w*|less\s+conspicuous", "visible", ""),
    # ... but not these: "no change", "without interval growth" still mean the lesion is there
    (r"unchanged|stable|stability|no\s+(?:significant\s+|interval\s+|appreciable\s+|definite\s+)?(?:change|growth|"
     r"increase|decrease)|change|smaller|larger|decreas\w*|increas\w*|reduc\w*|shr[iau]nk\w*|enlarg\w*|grow\w*|"
     r"grew|regress\w*|partial(?:ly)?\s+(?:respon\w*|regress\w*)|response|responding|progress\w*|"
     r"cannot\s+be\s+(?:excluded|ruled\s+out)|can't\s+be\s+excluded|not\s+(?:be\s+)?(?:excluded|ruled\s+out)",
     "visible", "noflip"),
    (r"lesions?|nodules?|mass(?:es)?|metastas[ie]s|metastatic\s+deposits?|deposits?|foci|focus|tumou?rs?|"
     r"hypodensit\w*|hypoattenuation|SIZE", "visible", "weak"),
)

OPERATIVE = (
    # intraoperative ultrasound: found / not found
    (rf"(?:{_SEEN}|found|located|localised|localized|confirmed|palpated|palpable|identified)\s+(?:\w+\s+){{0,3}}?"
     rf"(?:on|by|with|at|using|in|under)\s+(?:the\s+|a\s+)?(?:{IOUS})", "found_on_ious", ""),
    (rf"(?:{IOUS})\s+(?:\([^)]*\)\s+)?(?:clearly\s+|also\s+|again\s+)?(?:identified|detected|showed|shows|revealed|"
     rf"demonstrated|confirmed|located|localised|localized|found|depicted|visuali[sz]ed)", "found_on_ious", ""),
    (rf"(?:{IOUS})\s+(?:\([^)]*\)\s+)?(?:did\s+not|does\s+not|failed\s+to|could\s+not|couldn't|didn't)\s+"
     r"(?:show|identify|detect|reveal|demonstrate|locate|find|depict|visuali[sz]e|confirm)", "not_found_on_ious", ""),
    (rf"(?:{IOUS})[- ](?:negative|occult|invisible)|(?:occult|invisible|undetectable)\s+(?:on|by|at)\s+(?:{IOUS})",
     "not_found_on_ious", ""),
    (rf"(?:{IOUS})[- ]positive", "found_on_ious", ""),
    # a bare "seen" / "not identified" in a note that uses intraoperative ultrasound speaks of the IOUS,
    # unless it is about the preoperative imaging ("visible on preoperative MRI")
    (r"(?:seen|visible|identified|detected|visuali[sz]ed|depicted|demonstrated|shown|found|located|localised|"
     r"localized|confirmed)(?!\s+(?:\w+\s+){0,2}?(?:on|by|at)\s+(?:the\s+)?"
     r"(?:pre-?operative|CT|MRI|MR|imaging|PET|staging|baseline|prior))", "found_on_ious", "ious"),
    # a lesion described under intraoperative ultrasound ("On IOUS, a 15 mm lesion in segment 6", "Findings on
    # IOUS:" heading a list) was found on it
    (r"lesions?|nodules?|mass(?:es)?|metastas[ie]s|tumou?rs?|foci|focus|SIZE", "found_on_ious", "weak ious_local"),
    # left in place
    (r"left\s+(?:in\s+(?:place|situ)|untreated|alone)|not\s+(?:been\s+)?(?:resected|removed|treated|ablated|excised)|"
     r"no\s+(?:resection|treatment|ablation)|(?:was|were)\s+left|untreated|observ\w*|surveillance|watch\w*\s+"
     r"(?:and\s+)?wait\w*|preserved|spared|monitor\w*|follow-up\s+imaging", "left_in_place", ""),
    # ablated
    (r"ablat\w*|RFA|MWA|radiofrequency|radio-frequency|microwave|cryo\w*|electroporation|thermal", "ablated", ""),
    # resected
    (r"resect\w*|remov\w*|excis\w*|\w*(?:hepatectom|segmentectom|sectionectom|lobectom)\w*|metastasectom\w*|"
     r"enucleat\w*|wedge|taken\s+with|included\s+in\s+the\s+(?:specimen|resection)", "resected", ""),
)

PATHOLOGY = (
    (r"(?:complete\s+)?(?:pathologic(?:al)?\s+)?complete\s+(?:pathologic(?:al)?\s+)?response|\bpCR\b|"
     r"(?:necrosis|fibrosis|scar\w*|hyalini[sz]ation)\s+only|only\s+(?:\w+\s+){0,2}?(?:necrosis|fibrosis|scar\w*)|"
     r"no\s+(?:residual\s+|viable\s+)*(?:tumou?r|carcinoma|adenocarcinoma|malignancy|neoplasm|cancer|metastas[ie]s)"
     r"(?:\s+cells?)?|(?:tumou?r|malignancy)[- ]free|negative\s+for\s+(?:\w+\s+){0,2}?(?:malignancy|tumou?r|carcinoma)|"
     r"TRG\s*1\b|benign|complete\s+(?:tumou?r\s+)?regression", "no_viable_tumor", ""),
    (r"viable(?:\s+(?:tumou?r|carcinoma|adenocarcinoma|cancer|neoplastic|malignant|metastatic))*(?:\s+cells?)?|"
     r"residual\s+(?:viable\s+)?(?:adeno)?carcinoma|residual\s+(?:metastatic\s+)?tumou?r(?:\s+cells?)?|"
     r"(?:metastatic\s+)?(?:\w+\s+differentiated\s+)?(?:colorectal\s+)?adenocarcinoma|carcinoma|malignan\w*|"
     r"tumou?r\s+cells?|cancer\s+cells?|cannot\s+be\s+excluded", "viable_tumor", ""),
    # the lesion could not be assessed: no finding (not_assessable is dropped, it only blocks weak words)
    (r"not\s+(?:assessable|evaluable|assessed)|(?:site\s+)?not\s+(?:identified|found)\s+in\s+the\s+specimen",
     "not_assessable", ""),
    (r"necrosis|necrotic|fibrosis|fibrotic|scar\w*|hyalini[sz]\w*|regressi\w*", "no_viable_tumor", "weak"),
    (r"tumou?rs?|lesions?|nodules?|metastas[ie]s|SIZE", "viable_tumor", "weak"),
)

FOLLOWUP = (
    (r"recurren\w*|relaps\w*|re-?growth|regrow\w*|reappear\w*|new\s+(?:\w+\s+){0,3}?(?:lesions?|metastas[ie]s|nodules?|"
     r"masses|mass|foci|focus|deposits?)|progress\w*|cannot\s+be\s+(?:excluded|ruled\s+out)|suspicious|"
     r"enlarg\w*|grow\w*|increas\w*", "recurrence", ""),
    (r"no\s+evidence\s+of\s+(?:\w+\s+){0,3}?(?:recurren\w*|disease|metastas[ie]s|malignancy)|disease[- ]free|"
     r"stable|unchanged|clear", "no_recurrence", ""),
    # what a treated site should look like: only when nothing else is said about the segment
    (r"(?:post-?(?:surgical|operative|treatment|ablation)|treatment[- ]related|expected)\s+changes?|"
     r"ablation\s+(?:zone|cavity|defect|site)|scar", "no_recurrence", "weak"),
    (r"lesions?|nodules?|mass(?:es)?|metastas[ie]s|foci|focus|SIZE", "recurrence", "weak"),
)

TRIGGERS = {"imaging": IMAGING, "operative": OPERATIVE, "pathology": PATHOLOGY, "followup": FOLLOWUP}

# Negation cue before a trigger (within its clause, no comma or conjunction in between).
NEGATION_BEFORE = r"\b(?:no|not|without|absence\s+of|absent|negative\s+for|free\s+of|nor|neither|never)\b"
NEGATION_AFTER = r"^\s*(?:[:=-]\s*)?(?:none|absent|negative|not\s+(?:seen|identified|present|detected|found))\b"
NEGATION_BLOCK = r"[,;:()]|\b(?:but|however|although|though|whereas|while|except|and|which|with)\b"
HEDGE = (r"\b(?:possible|possibly|probable|probably|likely|suspicious|suspected|suspect|suspicion|equivocal|"
         r"indeterminate|questionable|subtle|faint|may|might|uncertain|doubtful|cannot\s+be\s+(?:excluded|ruled\s+out)|"
         r"not\s+(?:be\s+)?(?:excluded|ruled\s+out))\b")
# A word just before a trigger that moves it into the past: "previously seen", "initially described".
HISTORY_BEFORE_TRIGGER = r"\b(?:previously|formerly|initially|originally|earlier|at\s+baseline)\s+(?:\w+\s+)?$"
# ... or just before a size: "previously 25 mm", "which was 25 mm", "from 25 mm", "(prev. 11 mm)".
HISTORY_BEFORE_SIZE = (r"\b(?:previously|prior|formerly|initially|originally|earlier|was|were|had\s+been|from|"
                       r"baseline|prev\.?|pre-?chemo\w*|pre-?treatment)\s*(?:\w+\s*)?[:]?\s*$")
# Just after a trigger or size: "seen on the baseline study", "30 mm in 2024", "12 mm at diagnosis".
HISTORY_AFTER = (r"^\s*(?:[\w-]+\s+){0,3}?(?:on|in|at|from|since|vs\.?|versus)\s+(?:the\s+|a\s+)?(?:prior|previous|"
                 r"baseline|earlier|last|preceding|initial|index|pre-\w+|pre(?:chemo|treatment|operative)\w*|(?:\d{1,2}[/.-]){0,2}(?:19|20)\d\d)\b|"
                 r"^\s*(?:[\w-]+\s+){0,2}?(?:at\s+(?:baseline|diagnosis)|previously|before\s+chemotherapy)\b")
# A clause opening on the past: "Previously, there were lesions in S2 and S3."
HISTORY_CLAUSE = (r"^\W*(?:previously|at\s+baseline|at\s+diagnosis|before\s+chemotherapy|on\s+the\s+(?:prior|previous|"
                  r"baseline)\s+(?:study|CT|MRI|MR|scan|exam\w*)|in\s+(?:19|20)\d\d)\b")
# Parentheses about the past: "(baseline 25 mm)", "(previously 11 mm)".
HISTORY_PAREN = r"\b(?:previous\w*|prior|baseline|was|were|prev|before|pre-\w+|pre(?:chemo|treatment)\w*|initial\w*|originally)\b"
CURRENT = r"\b(?:now|currently|today|at\s+present|on\s+(?:the\s+)?(?:current|present|this)\s+(?:study|exam\w*|scan))\b"
# A size followed by these is the old size: "25 mm -> 12 mm", "decreased from 25 to 12 mm".
SIZE_OLD_AFTER = r"^\s*(?:->|→|⇒|to\b)"
# Extra-hepatic and primary-tumour words (report-level statements mentioning only these are ignored).
EXTRAHEPATIC = (r"\b(?:lungs?|pulmonary|lymph|nodes?|nodal|peritone\w*|omentum|omental|bones?|osseous|vertebra\w*|"
                r"adrenal|brain|pleura\w*|spleen|kidney|renal|ovar\w*|colon|colonic|rect\w*|sigmoid|caec\w*|cec\w*|"
                r"anastomo\w*|primary|pelvi\w*|chest|thorax|thoracic|port[- ]site|abdominal\s+wall)\b")
LIVER = r"\b(?:liver|hepatic|intra-?hepatic|hepatectomy|segment|lobe)\b"
# Findings called something other than a metastasis give nothing ("small cyst in segment 3").
NOT_METASTASIS = (r"\b(?:cysts?|cystic|haemangiomas?|hemangiomas?|perfusion|THADs?|shunt|flash[- ]fill\w*|focal\s+fat|"
                  r"fatty\s+(?:sparing|infiltration)|biloma|abscess|FNH|adenoma|calcification|granuloma)\b")
COUNT = {"two": 2, "three": 3, "four": 4, "five": 5, "2": 2, "3": 3, "4": 4, "5": 5, "both": 2, "twin": 2}
COUNT_BEFORE = (r"\b(?P<n>two|three|four|five|[2-5]|both)\s+(?:\w+\s+){0,3}?(?:lesions|metastases|nodules|foci|masses|"
                r"deposits|DLMs)\s+(?:\w+\s+){0,2}?(?:in|at|within|of)\s+(?:the\s+)?$")
