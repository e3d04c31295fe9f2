"""Japanese report texts (imaging, operative note, pathology) for a course: the same facts as the English
texts of etl.synth.narrative, in the phrasing of Japanese reports (lesions numbered "#1", "#2" as is
common there); `style` picks one of several phrasings.
"""
from __future__ import annotations

from datetime import date

from .timeline import Imaging, Lesion

_TITLE = {"ct": "胸腹部造影CT", "mri": "肝EOB-MRI"}
_INDICATION = {
    "staging": "大腸癌の病期診断。",
    "baseline": "大腸癌肝転移。化学療法前の評価。",
    "post_chemo": "大腸癌肝転移。化学療法後、肝切除前の再評価。",
    "follow_up": "肝切除後の経過観察。",
}
_HANDLING = {"resected": ("切除した", "部分切除を行った"), "ablated": ("ラジオ波焼灼を行った", "焼灼した"),
             "left_in_place": ("切除せず温存した", "経過観察とし切除しなかった")}


def segment_label(segment: str, style: int) -> str:
    """e.g. "S7", "肝S7" or "Ｓ７" (full-width)."""
    plain = "S" + segment
    return (plain, "肝" + plain, plain.translate(_FULL_WIDTH))[style % 3]


_FULL_WIDTH = str.maketrans("S0123456789ab/", "Ｓ０１２３４５６７８９ａｂ／")


def _document(title: str, when: date, body: list[str], conclusion: str) -> str:
    return "\n".join([title, f"検査日: {when.isoformat()}", *body, f"診断: {conclusion}", ""])


def imaging(study: Imaging, sizes: list[tuple[Lesion, int | None]], new_lesion: bool, style: int = 0) -> str:
    body = [f"臨床情報: {_INDICATION[study.phase]}"]
    if study.modality == "mri":
        body.append("撮像: 拡散強調像" + ("あり" if study.dwi else "なし") + "、肝細胞相" +
                    ("あり" if study.hepatobiliary else "なし") + "。")
    body.append("所見:")
    for lesion, mm in sizes:
        where = f"#{lesion.number} " + segment_label(lesion.segment, style + lesion.number)
        if study.phase == "follow_up":
            treated = "温存部" if lesion.handling == "left_in_place" else "焼灼部"
            body.append(f"  {where}({treated})に" + (f"{mm}mm大の結節が出現しています(局所再発)。" if mm is not None
                                                    else "病変を認めません。"))
            continue
        if mm is not None:
            body.append(("  {w}に径{mm}mmの低吸収域を認めます。", "  {w}の転移巣は{mm}mm大です。")[style % 2]
                        .format(w=where, mm=mm))
        else:
            body.append(("  {w}の転移巣は消失しています。", "  {w}の病変は指摘できません。")[style % 2].format(w=where))
    if new_lesion:
        body.append("  既治療部位とは別に新たな肝病変を認め、再発を疑います。")
    if not sizes and not new_lesion:
        body.append("  肝に明らかな腫瘤性病変を認めません。")
    if study.phase == "staging":
        conclusion = "肝転移なし。"
    elif study.phase == "baseline":
        conclusion = f"多発肝転移({len(sizes)}個)。" if len(sizes) > 1 else "肝転移(1個)。"
    elif study.phase == "post_chemo":
        gone = sum(mm is None for _, mm in sizes)
        conclusion = f"化学療法後、{len(sizes)}病変中{gone}病変が消失。"
    else:
        recurred = [l for l, mm in sizes if mm is not None]
        conclusion = "局所再発。" if recurred else ("新規病変あり、再発疑い。" if new_lesion else "再発所見なし。")
    return _document(_TITLE[study.modality], study.date, body, conclusion)


def operative_note(when: date, procedure: str, stage: int, stages: int, ce_ious: bool, lesions: list[Lesion],
                   style: int = 0) -> str:
    staged = f"(二期的肝切除の{stage + 1}期目)" if stages > 1 else ""
    body = [f"術式: {procedure}{staged}。",
            "術中超音波: " + ("造影(ソナゾイド)術中超音波を施行。" if ce_ious else "Bモード術中超音波を施行。"),
            "所見と処置:"]
    for lesion in lesions:
        where = f"#{lesion.number} " + segment_label(lesion.segment, style + lesion.number)
        action = _HANDLING[lesion.handling][style % 2]
        if lesion.is_dlm:
            found = "術中超音波で同定し" if lesion.found_on_ious else "術中超音波で同定できず"
            body.append(f"  {where}(術前画像で消失): {found}、{action}。")
        else:
            body.append(f"  {where}: {action}。")
    return _document("手術記録", when, body, f"{len(lesions)}病変に対し処置。")


def pathology(when: date, surgery: date, lesions: list[Lesion], style: int = 0) -> str:
    body = [f"検体: 肝切除検体({surgery.isoformat()})。", "組織所見:"]
    for lesion in lesions:
        where = f"#{lesion.number} " + segment_label(lesion.segment, style + lesion.number)
        if lesion.pathology_viable is None:
            body.append(f"  {where}: 病変部を同定できず、評価不能。")
        elif lesion.pathology_viable:
            body.append(("  {w}: 大腸癌の転移として矛盾しない腺癌を認めます。", "  {w}: viableな腫瘍細胞の残存を認めます。")
                        [style % 2].format(w=where))
        else:
            body.append(("  {w}: 線維化のみで、腫瘍細胞の残存を認めません。", "  {w}: viableな腫瘍細胞は認めません。")
                        [style % 2].format(w=where))
    return _document("病理診断報告書", when, body, "上記の通り。")
