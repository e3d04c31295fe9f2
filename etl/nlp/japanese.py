"""Japanese lexicons: finding triggers per report kind and the context cues (same shape as english.py).

Japanese negation follows the word it negates (病変を認めない, 腫瘍細胞の残存なし, 切除せず), so besides
explicit negative triggers a trigger is reversed by a negative predicate right after it (NEGATION_AFTER).
Texts are width-normalised first, so ＳＲＦＡ / １２ｍｍ are matched as S / RFA / 12mm.
"""
from __future__ import annotations

_NEG = r"(?:ない|なく(?:なった|なっている|なりました)?|ません|ず|なかった|ませんでした)"
_DETECT = r"(?:同定|確認|描出|指摘|検出|認識|視認|特定)"
IOUS = (r"(?:(?:造影|ソナゾイド造影|腹腔鏡下?)?術中(?:造影)?(?:超音波|エコー|US)(?:検査)?|(?:CE-?)?IOUS|"
         r"造影(?:術中)?(?:超音波|エコー)|術中(?:超音波|エコー)\(?[^)]{0,12}\)?)")

IMAGING = (
    (r"消失|指摘(?:でき|され|し得)" + _NEG + r"|同定(?:でき|され|し得)" + _NEG + r"|描出(?:され|でき)" + _NEG +
     r"|認め(?:られ)?" + _NEG + r"|検出(?:され|でき)" + _NEG + r"|(?:見|み)られ" + _NEG + r"|確認(?:でき|され)" + _NEG +
     r"|(?:指摘|同定|描出)困難|完全奏効|\bCR\b|不明瞭化|(?:病変|結節|腫瘤)(?:は)?(?:なし|無し)|DLM", "not_visible", ""),
    (r"残存|遺残|出現|新出|新たに|新規|結節影", "visible", ""),       # 残存なし / 新規病変なし: absent
    (r"縮小|増大|不変|変化(?:は|を)?(?:なし|無し|認めない|認めません|ありません)|著変(?:は|を)?(?:なし|無し|認めない|"
     r"認めません|ありません)|認め(?:る|ます|た|ました|られる|られます|られた|ており|ています)|"
     r"指摘(?:される|されます|され|できる|できます|可能|あり)|描出(?:される|されます|されて)|同定(?:される|されます|できる|できます)|"
     r"(?:見|み)られ(?:る|ます)|否定でき(?:ない|ません|ず)|否定は困難|疑(?:い|う|われ)|残っ|PR|部分奏効|"
     r"拡散制限|低吸収|高信号|低信号|濃染", "visible", "noflip"),
    (r"結節|腫瘤|病変|低吸収域|転移巣|転移|SOL|SIZE", "visible", "weak"),
)

OPERATIVE = (
    (IOUS + r"(?:で|にて|により|によって|では|でも|上|を用いて)?(?:も|は)?[^、。]{0,12}?" + _DETECT + r"(?:でき|され|し得|し)?"
     + _NEG, "not_found_on_ious", ""),
    (IOUS + r"(?:で|にて|により|によって|では|でも|上)?(?:も|は)?[^、。]{0,12}?(?:同定|確認|描出|指摘|検出|認め|視認|特定|"
     r"明らか|描出良好)", "found_on_ious", ""),
    (_DETECT + r"(?:でき|され)" + _NEG + r"[^、。]{0,4}?(?:術中|IOUS)", "not_found_on_ious", ""),
    # 「同定できず」「同定し」 alone, in a note that uses intraoperative ultrasound
    (_DETECT + r"(?:でき|され|し得)" + _NEG, "not_found_on_ious", "ious"),
    (_DETECT + r"(?:し|され|でき|可能)", "found_on_ious", "ious"),
    (r"腫瘤|病変|結節|低エコー|高エコー|SIZE", "found_on_ious", "weak ious_local"),    # 術中超音波所見： の下の病変
    (r"切除(?:は|を)?(?:せず|しなかった|しない|行わず|行わなかった|施行せず)|非切除|温存|経過観察|無治療|治療(?:は|を)?(?:せず|行わず)|"
     r"処置(?:は|を)?(?:せず|行わず)|残した|残存させ|観察", "left_in_place", ""),
    (r"焼灼|ラジオ波|RFA|マイクロ波|MWA|凝固療法|アブレーション", "ablated", ""),
    (r"切除|摘出|核出|区域切除|葉切除|部分切除", "resected", ""),
)

PATHOLOGY = (
    (r"(?:壊死|線維化|瘢痕|硝子化)(?:巣)?のみ|組織学的(?:完全奏効|CR)|pCR|\bCR\b|(?:腫瘍|癌)(?:細胞)?の?(?:残存|遺残)(?:は|を)?(?:なし|無し|"
     r"認めない|認めません|認めず|ない|ありません)|悪性所見(?:は|を)?(?:なし|無し|認めない|認めません)|"
     r"viable\s*な?(?:腫瘍|癌)?(?:細胞)?(?:は|を)?(?:なし|無し|認めない|認めません|認めず)|Grade\s*3|TRG\s*1", "no_viable_tumor", ""),
    (r"(?:viable\s*な?)?(?:腫瘍|癌)細胞(?:の)?(?:残存|遺残)?|(?:腫瘍|癌)の(?:残存|遺残)|残存(?:腫瘍|癌)|viable|腺癌|"
     r"癌(?:の)?転移|転移性(?:腺)?癌|癌|否定でき(?:ない|ません)", "viable_tumor", ""),
    (r"壊死|線維化|瘢痕|硝子化", "no_viable_tumor", "weak"),
    (r"腫瘍|結節|病変|SIZE", "viable_tumor", "weak"),
)

FOLLOWUP = (
    (r"再発所見(?:は|を)?(?:なし|無し|認めない|認めません|ありません)|(?:術後|治療後|焼灼後)(?:の)?変化|再発(?:は|を)?"
     r"(?:なし|無し|認めない|認めません|認めず|ありません|ない)|新規病変(?:は|を)?(?:なし|無し|認めない|認めません)|"
     r"新たな病変(?:は|を)?(?:なし|無し|認めない|認めません)|(?:明らかな)?再発(?:は|の)?所見(?:は|を)?(?:なし|認めない)|"
     r"不変|変化(?:なし|を認めない)", "no_recurrence", ""),
    (r"再発|再燃|新規病変|新たな(?:肝)?(?:病変|結節|腫瘤)|新出|出現|増大|否定でき(?:ない|ません)|疑(?:い|う|われ)",
     "recurrence", ""),
    (r"結節|腫瘤|病変|SIZE", "recurrence", "weak"),
)

TRIGGERS = {"imaging": IMAGING, "operative": OPERATIVE, "pathology": PATHOLOGY, "followup": FOLLOWUP}

NEGATION_BEFORE = r"(?!x)x"          # Japanese negation is postposed
NEGATION_AFTER = (r"^[^、。,;\n]{0,6}?(?:(?:は|を|が|も)?(?:なし|無し)|認め(?:られ)?(?:ない|ません|ず)|(?:見|み)られ(?:ない|ません|ず)|"
                  r"ありません|はない|指摘(?:でき)?(?:ない|ません|ず))")
NEGATION_BLOCK = r"[、。,;]"
HEDGE = r"疑(?:い|う|われ)|否定でき(?:ない|ません|ず)|否定は困難|可能性|示唆|考えられ|possible|equivocal"
HISTORY_BEFORE_TRIGGER = r"(?:前回|以前|初回|治療前|化学療法前|ベースライン)(?:の?(?:CT|MRI|検査|画像))?(?:では|で|に|にて|は|の)?$"
HISTORY_BEFORE_SIZE = r"(?:前回|以前|初回|治療前|化学療法前|ベースライン|前|from|previously)(?:の?(?:CT|MRI|検査))?(?:では|で|は|の|に|:)?\s*(?:径|最大径)?$"
# A clause opening on the past ("前回MRIではS2、S4aに計4病変") is historical unless it compares (前回と比較して).
HISTORY_CLAUSE = r"^\s*(?:前回|以前|初回|治療前|化学療法前)(?:の)?(?:CT|MRI|検査|画像)?[^、。と]{0,12}?(?:では|で|は|に)(?!比べ|比較)"
HISTORY_AFTER = r"^\s*(?:から|より|→|->|⇒)"
HISTORY_PAREN = r"前回|以前|初回|治療前|化学療法前|ベースライン|前"
CURRENT = r"今回|現在|本検査"
SIZE_OLD_AFTER = r"^\s*(?:から|より|→|->|⇒)"
EXTRAHEPATIC = r"肺|リンパ節|腹膜|播種|骨|副腎|脳|胸膜|脾|腎|卵巣|吻合部|原発|直腸|結腸|大腸(?!癌)|胸水|腹水|腹壁"
LIVER = r"肝"
NOT_METASTASIS = r"嚢胞|のう胞|血管腫|偽病変|シャント|AP-?shunt|THAD|限局性脂肪|脂肪沈着|膿瘍|FNH|石灰化|早期濃染域"
COUNT = {"2": 2, "3": 3, "4": 4, "5": 5, "二": 2, "三": 3, "四": 4, "五": 5}
COUNT_AFTER = r"^[にのはで]?[^、。]{0,8}?(?P<n>[2-5二三四五])\s*(?:個|病変|箇所|か所|ヶ所|カ所|つ)"
