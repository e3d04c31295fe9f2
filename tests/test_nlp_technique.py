"""MRI technique from report text (etl.nlp.technique, rules K1-K3): DREAM's protocol for narrative-only sites."""
from __future__ import annotations

import pytest

from etl.nlp.technique import mri_technique, protocol_met

CASES = [
    # K1 / K2 in technique paragraphs, English
    ("Technique: diffusion-weighted imaging performed; hepatobiliary phase (gadoxetic acid) not performed.",
     True, False),
    ("Technique: DWI was not obtained. Hepatobiliary phase images at 20 minutes after Primovist.", False, True),
    ("Liver MRI without diffusion-weighted imaging, with Gd-EOB-DTPA.", False, True),
    ("Sequences: T2, DWI (b 50/800), dynamic and HBP.", True, True),
    ("Diffusion: none. Hepatobiliary phase: n/a", False, False),
    # K2: findings read on a sequence show it was acquired, even when they are negative
    ("No restricted diffusion in S7. Hepatobiliary phase: no lesion.", True, True),
    ("no diffusion restriction; hypointense on HBP", True, True),
    # K3: an explicit statement wins over an indirect one; nothing said is unknown
    ("Gadoxetic acid MRI. Hepatobiliary phase was omitted (patient discomfort).", None, False),
    ("MRI liver with contrast. The S7 lesion is no longer visible.", None, None),
    # Japanese
    ("撮像: 拡散強調像あり、肝細胞相なし。", True, False),
    ("肝EOB-MRI。拡散強調像は撮像せず。肝細胞相でS7に低信号を認めない。", False, True),
    ("EOB・プリモビスト造影MRI。拡散強調画像で拡散制限なし。", True, True),
]


@pytest.mark.parametrize("text, dwi, hbp", CASES)
def test_technique_rules(text, dwi, hbp):
    assert mri_technique(text) == {"mri_dwi": dwi, "mri_hepatobiliary_phase": hbp}


@pytest.mark.parametrize("technique, met", [
    ({"mri_dwi": True, "mri_hepatobiliary_phase": True}, True),
    ({"mri_dwi": True, "mri_hepatobiliary_phase": None}, False),   # one said, the other not: not shown to be met
    ({"mri_dwi": False, "mri_hepatobiliary_phase": True}, False),
    ({"mri_dwi": None, "mri_hepatobiliary_phase": None}, None),
])
def test_protocol_met_needs_both(technique, met):
    assert protocol_met(technique) is met
