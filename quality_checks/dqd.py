"""Generate OMOP checks from the OHDSI DQD v5.4 definitions and thresholds (not hand-written).

Every DQD check type whose inputs a registry holds is generated from `spec/` (DQD's table-, field- and
concept-level CSVs); its severity follows DQD's own (fatal -> critical, convention and characterization
-> warning). Each check is one great-expectations expectation on a frame: the table itself, enriched by
SQL joins (parent keys, concept attributes, birth, death, visit dates) and a pandas step for date
arithmetic, which is not portable SQL. Not generated: plausibleGenderUseDescendants (needs
CONCEPT_ANCESTOR from a full vocabulary). As in DQD, vocabulary tables are not checked and checks on an
empty table are not applicable (not run); concept-level checks run for the concepts the data holds.

Vocabulary: a registry without a loaded OMOP vocabulary (an empty VOCABULARY table; the bundled
`mappings/concepts.csv` holds only the verified concept subset) cannot tell a wrong concept id from one
its subset lacks, so foreign keys into vocabulary tables are then warnings, not critical.
"""
from __future__ import annotations

import csv
import datetime as dt
import re
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

import sqlalchemy as sa

from quality_checks.checks import ROWS, Check, Frame
from registry_schema.cdm import CHILD_TABLES

SPEC = Path(__file__).parent / "spec"
# DQD executeDqChecks() default tablesToExclude.
VOCABULARY_TABLES = frozenset({"concept", "vocabulary", "concept_ancestor", "concept_relationship",
                               "concept_class", "concept_synonym", "relationship", "domain"})
SEVERITY = {"fatal": "critical", "convention": "warning", "characterization": "warning"}
GENDER_CONCEPTS = {"Male": 8507, "Female": 8532}  # mappings/concepts.csv (verified rows)
INTEGER_TYPES = {"integer", "bigint"}
DATE_TYPES = {"date", "datetime"}
HELPER_DATES = ("_birth_datetime", "_death_date", "_visit_start_date", "_visit_end_date")  # joined in


@lru_cache(maxsize=None)
def spec_rows(level: str) -> tuple[dict, ...]:
    """Rows of DQD's OMOP_CDMv5.4_<level>.csv (Table_Level, Field_Level, Concept_Level, Check_Descriptions)."""
    with (SPEC / f"OMOP_CDMv5.4_{level}.csv").open(newline="", encoding="utf-8") as handle:
        return tuple(csv.DictReader(handle))


@lru_cache(maxsize=None)
def severity(check_type: str) -> str:
    for row in spec_rows("Check_Descriptions"):
        if row["checkName"] == check_type:
            return SEVERITY[row["severity"]]
    raise KeyError(f"not a DQD check type: {check_type}")


def _yes(row: dict, key: str) -> bool:
    return row.get(key, "").strip() == "Yes"


def _threshold(value: str) -> float:
    return float(value) if value.strip() not in ("", "NA") else 0.0


def _bound(expression: str, datatype: str, today: dt.date):
    """A DQD plausible-value bound as a Python value (literal dates, numbers, GETDATE() forms)."""
    text = expression.strip()
    if text in ("", "NA"):
        return None
    if text == "DATEADD(dd,1,GETDATE())":
        return dt.datetime.combine(today + dt.timedelta(days=1), dt.time())
    if text == "YEAR(GETDATE())+1":
        return today.year + 1
    literal = re.fullmatch(r"'(\d{4})(\d{2})(\d{2})'", text)
    if literal:
        return dt.datetime(*map(int, literal.groups()))
    return float(text)


def _check(check_type: str, frame: str, field: str | None, name: str, threshold: str | float,
           expectation: str, kwargs: dict, description: str) -> Check:
    value = threshold if isinstance(threshold, float) else _threshold(threshold)
    return Check(f"{check_type}:{name}", check_type, frame, field, severity(check_type), value, expectation,
                 kwargs, description)


def _in(column: str, values: list, **extra) -> tuple[str, dict]:
    return "ExpectColumnValuesToBeInSet", {"column": column, "value_set": values, **extra}


# -- frames -------------------------------------------------------------------------------------------

def _structure_frames(tables: dict[str, sa.Table]) -> dict[str, Frame]:
    """What the database really holds (cdmTable, cdmField): one column per specified table, so that each
    table's check is one plain expectation. In the field frame a table's column is filled only on the rows
    of its own fields (others are missing, which expectations skip)."""
    schema = tables["person"].schema
    specified = [(r["cdmTableName"].lower(), r["cdmFieldName"].lower()) for r in spec_rows("Field_Level")]
    names = list(dict.fromkeys(t for t, _ in specified))

    def existing(conn: sa.Connection) -> dict[str, set[str]]:
        inspector = sa.inspect(conn)
        found = set(inspector.get_table_names(schema=schema)) & set(names)
        return {t: {c["name"].lower() for c in inspector.get_columns(t, schema=schema)} for t in found}

    def table_frame(conn: sa.Connection):
        import pandas as pd

        found = existing(conn)
        return pd.DataFrame([{t: t in found for t in names}])

    def field_frame(conn: sa.Connection):
        import pandas as pd

        found = existing(conn)
        return pd.DataFrame([{table: field in found.get(table, ()) for table in [t]} for t, field in specified],
                            columns=names, dtype=object)

    return {"dqd:cdm_tables": Frame(table_frame), "dqd:cdm_fields": Frame(field_frame)}


def _table_frame(tables: dict[str, sa.Table], name: str, rows: list[dict], persons: sa.Select | None = None) -> Frame:
    """The table, plus one derived column per relational check and the dates the temporal checks need;
    with `persons` (a select of person ids), only those persons' rows.

    Each column records the joins and the table columns it needs. A select of a few columns
    (`Frame.narrow`) joins only what they need; a counted select (`Frame.counted_select`) counts the
    distinct values of the table columns they need, then joins and derives per distinct value, not per
    row: a check group never pays for the joins of the others, nor for a join per row.
    """
    t = tables[name]
    within_visit = [r["cdmFieldName"].lower() for r in rows if _yes(r, "withinVisitDates")]
    has_visit = "visit_occurrence_id" in t.c and name != "visit_occurrence"

    def build(c) -> tuple[dict, dict]:
        """{name: (expression, joins, table columns)} and {join: (table, on)} over the columns `c` of the
        table or of its counted rows (which hold only the table columns they need)."""
        columns = {col.name: (c[col.name], (), (col.name,)) for col in t.c if col.name in c}
        joins: dict[str, tuple[sa.FromClause, sa.ColumnElement]] = {}  # in join order
        for row in rows:
            field = row["cdmFieldName"].lower()
            if field not in c:
                continue
            column = c[field]
            fk_table = row["fkTableName"].strip().lower()
            concept = None
            if _yes(row, "isForeignKey") and fk_table in tables:
                parent = tables[fk_table].alias(f"fk_{field}")
                key = parent.c[row["fkFieldName"].lower()]
                joins[parent.name] = (parent, key == column)
                columns[f"_fk__{field}"] = (sa.case((column.is_(None), None), (key.is_(None), 0), else_=1),
                                            (parent.name,), (field,))
                if fk_table == "concept":
                    concept = parent  # the concept checks read the same join
            if concept is None and (fk_table == "concept"
                                    or any(_yes(row, k) for k in ("fkDomain", "fkClass", "isStandardValidConcept"))):
                concept = tables["concept"].alias(f"concept_{field}")
                joins[concept.name] = (concept, concept.c.concept_id == column)
            if concept is not None:
                real = sa.and_(concept.c.concept_id.is_not(None), concept.c.concept_id != 0)
                standard = sa.case((sa.and_(concept.c.standard_concept == "S", concept.c.invalid_reason.is_(None)),
                                    1), else_=0)
                columns[f"_domain__{field}"] = (sa.case((real, concept.c.domain_id)), (concept.name,), (field,))
                columns[f"_class__{field}"] = (sa.case((real, concept.c.concept_class_id)), (concept.name,), (field,))
                columns[f"_standard__{field}"] = (sa.case((real, standard)), (concept.name,), (field,))
            if row["cdmDatatype"].lower() in INTEGER_TYPES:
                columns[f"_text__{field}"] = (sa.cast(column, sa.String), (), (field,))
        if "person_id" in c:
            person = tables["person"].alias("person_")
            death = tables["death"]
            first_death = (sa.select(death.c.person_id, sa.func.min(death.c.death_date).label("death_date"))
                           .group_by(death.c.person_id).subquery("death_"))
            joins["person_"] = (person, person.c.person_id == c["person_id"])
            joins["death_"] = (first_death, first_death.c.person_id == c["person_id"])
            for label, column in (("_birth_datetime", person.c.birth_datetime),
                                  ("_year_of_birth", person.c.year_of_birth),
                                  ("_month_of_birth", person.c.month_of_birth), ("_day_of_birth", person.c.day_of_birth),
                                  ("_gender_concept_id", person.c.gender_concept_id)):
                columns[label] = (column, ("person_",), ("person_id",))
            columns["_death_date"] = (first_death.c.death_date, ("death_",), ("person_id",))
        if has_visit and "visit_occurrence_id" in c:
            visit = tables["visit_occurrence"].alias("visit_")
            joins["visit_"] = (visit, visit.c.visit_occurrence_id == c["visit_occurrence_id"])
            columns["_visit_start_date"] = (visit.c.visit_start_date, ("visit_",), ("visit_occurrence_id",))
            columns["_visit_end_date"] = (visit.c.visit_end_date, ("visit_",), ("visit_occurrence_id",))
        return columns, joins

    def select(c, source, names: list[str], *extra) -> sa.Select:
        columns, joins = build(c)
        needed = {j for n in names for j in columns[n][1]}
        for join, (table, on) in joins.items():
            if join in needed:
                source = source.outerjoin(table, on)
        # Dates are read as the driver gives them (SQLite: ISO text) and parsed by the pandas step.
        return sa.select(*[(sa.type_coerce(columns[n][0], sa.String) if n in parsed else columns[n][0]).label(n)
                           for n in names], *extra).select_from(source)

    # The rows of `persons` only: the table joined first to their ids (or their notes' or episodes' ids), so
    # that the other joins see only those rows (PostgreSQL keeps the written join order of this many joins).
    owned = t
    if persons is not None:
        column, parent_name, parent_id = CHILD_TABLES.get(name, ("person_id", None, None))
        ids = persons.subquery("scope_") if parent_name is None else sa.select(
            tables[parent_name].c[parent_id].label("id")).where(tables[parent_name].c.person_id.in_(persons)).subquery("scope_")
        owned = t.join(ids, t.c[column] == ids.c[0])

    bases = {n: column[2] for n, column in build(t.c)[0].items()}

    def counted(names: list[str], nullness_only: frozenset[str]) -> sa.Select:
        needed = list(dict.fromkeys(b for n in names for b in bases[n]))
        # A text column only NULL tests read, and nothing derives from, counts as NULL or not.
        collapsed = {b for b in needed if b in nullness_only and isinstance(t.c[b].type, sa.String)
                     and all(bases[n] == (b,) and n == b for n in names if b in bases[n])}
        keys = [t.c[b].is_(None) if b in collapsed else t.c[b] for b in needed]
        values = [sa.func.min(t.c[b]).label(b) if b in collapsed else t.c[b] for b in needed]
        distinct = (sa.select(*values, sa.func.count().label(ROWS)).select_from(owned).group_by(*keys)
                    .subquery("distinct_"))
        # Not counted again after the joins: rows that become equal there just stay apart.
        return select(distinct.c, distinct, names, distinct.c[ROWS])

    derived: dict[str, tuple[str, ...]] = {}
    if "person_id" in t.c:
        derived |= {"_birth_day": ("_birth_datetime", "_year_of_birth", "_month_of_birth", "_day_of_birth"),
                    "_death_limit": ("_death_date",)}
    if has_visit:
        derived |= {f"_within_visit__{f}": (f, "_visit_start_date", "_visit_end_date") for f in within_visit}
    if "unit_concept_id" in t.c:
        derived["_unit_or_none"] = ("unit_concept_id",)
    dates = [r["cdmFieldName"].lower() for r in rows if r["cdmDatatype"] in DATE_TYPES]
    parsed = set(dates) | set(HELPER_DATES)
    concepts = {r["cdmFieldName"].lower() for r in rows if r["fkTableName"].strip().lower() == "concept"}
    low = {n for n, b in bases.items() if set(b) <= concepts} | ({"_gender_concept_id"} if "person_id" in t.c else set())
    scoped = None
    if ("person_id" in t.c or name in CHILD_TABLES) and persons is None:
        def scoped(ids: sa.Select) -> Frame:
            return _table_frame(tables, name, rows, ids)
    return Frame(select(t.c, owned, list(bases)), lambda data: _dates(data, dates, within_visit), derived,
                 lambda names: select(t.c, owned, names), counted, frozenset(low), bases, scoped,
                 few_rows=persons is not None)


def _dates(data, dates: list[str], within_visit: list[str]):
    """Dates as timestamps, birth as a day, death + 60 days (DQD's allowance), the +-7-day visit window.

    Row by row, on whichever of the frame's columns `data` holds (a check group reads only its own)."""
    import pandas as pd

    for column in [c for c in [*dates, *HELPER_DATES] if c in data]:
        data[column] = pd.to_datetime(data[column], errors="coerce", format="ISO8601")
    if "_birth_datetime" in data:
        composed = pd.to_datetime(pd.DataFrame({"year": pd.to_numeric(data["_year_of_birth"]),
                                                "month": pd.to_numeric(data["_month_of_birth"]).fillna(1),
                                                "day": pd.to_numeric(data["_day_of_birth"]).fillna(1)}),
                                  errors="coerce")
        data["_birth_day"] = data["_birth_datetime"].dt.normalize().fillna(composed)
    if "_death_date" in data:
        # Exclusive limit: an event on the 60th day after death, at any time of day, is plausible.
        data["_death_limit"] = data["_death_date"].dt.normalize() + pd.Timedelta(days=61)
    for field in within_visit:
        if "_visit_start_date" not in data or field not in data:
            continue
        value, start, end = data[field], data["_visit_start_date"], data["_visit_end_date"]
        inside = (value >= start - pd.Timedelta(days=7)) & (value < end + pd.Timedelta(days=8))
        data[f"_within_visit__{field}"] = inside.astype("Int64").where(value.notna() & start.notna() & end.notna())
    if "unit_concept_id" in data:
        data["_unit_or_none"] = pd.to_numeric(data["unit_concept_id"], errors="coerce").fillna(-1)
    return data


def _source_value_frame(tables: dict[str, sa.Table], name: str, field: str, standard: str) -> Frame:
    """Distinct source values (NULL is one) and whether any of their rows was mapped to concept 0."""
    t = tables[name]
    zero = sa.func.max(sa.case((t.c[standard] == 0, 1), else_=0)).label("mapped_to_zero")
    return Frame(sa.select(t.c[field], zero).group_by(t.c[field]))


def _persons_frame(tables: dict[str, sa.Table], completeness: list[str]) -> Frame:
    """One row per person: a record in each table (measurePersonCompleteness), an era where conditions
    exist (measureConditionEraCompleteness), no overlapping or adjacent observation periods."""
    person = tables["person"]

    def has(table: str):
        t = tables[table]
        return sa.exists().where(t.c.person_id == person.c.person_id)

    columns = [person.c.person_id] + [sa.case((has(t), 1), else_=0).label(f"_has__{t}") for t in completeness]
    columns.append(sa.case((~has("condition_occurrence"), None), (has("condition_era"), 1), else_=0)
                   .label("_condition_era"))
    period = tables["observation_period"]

    def read(conn: sa.Connection):
        import pandas as pd

        data = pd.read_sql(sa.select(*columns), conn)
        periods = pd.read_sql(sa.select(period.c.person_id, period.c.observation_period_start_date.label("start"),
                                        period.c.observation_period_end_date.label("end")), conn)
        for column in ("start", "end"):
            periods[column] = pd.to_datetime(periods[column])
        periods = periods.sort_values(["person_id", "start"])
        previous_end = periods.groupby("person_id")["end"].shift()
        touching = periods.loc[periods["start"] <= previous_end + pd.Timedelta(days=1), "person_id"]
        data["_no_overlap"] = (~data["person_id"].isin(set(touching))).astype(int)
        return data

    return Frame(read)


# -- checks -------------------------------------------------------------------------------------------

def _field_checks(name: str, row: dict, today: dt.date, full_vocabulary: bool) -> list[Check]:
    frame, field, datatype = f"dqd:{name}", row["cdmFieldName"].lower(), row["cdmDatatype"]
    base = f"{name}.{field}"
    checks = []

    def add(check_type, expectation, kwargs, description, threshold=None, suffix=""):
        threshold = row[f"{check_type}Threshold"] if threshold is None else threshold
        checks.append(_check(check_type, frame, field, base + suffix, threshold, expectation, kwargs, description))

    if _yes(row, "isRequired"):
        add("isRequired", "ExpectColumnValuesToNotBeNull", {"column": field}, f"{base} is never NULL")
    if _yes(row, "isPrimaryKey"):
        add("isPrimaryKey", "ExpectColumnValuesToBeUnique", {"column": field}, f"{base} is unique")
    if datatype.lower() in INTEGER_TYPES:
        add("cdmDatatype", "ExpectColumnValuesToMatchRegex", {"column": f"_text__{field}", "regex": r"^-?\d+$"},
            f"{base} holds integers")
    if _yes(row, "isForeignKey"):
        add("isForeignKey", *_in(f"_fk__{field}", [1]),
            f"{base} exists in {row['fkTableName'].lower()}.{row['fkFieldName'].lower()}")
        if row["fkTableName"].lower() in VOCABULARY_TABLES and not full_vocabulary:
            checks[-1] = replace(checks[-1], severity="warning", description=checks[-1].description
                                 + " (a warning until a full vocabulary is loaded)")
    if row["fkDomain"].strip():
        add("fkDomain", *_in(f"_domain__{field}", [row["fkDomain"].strip()]),
            f"{base} concepts are in domain {row['fkDomain'].strip()}")
    if row["fkClass"].strip():
        add("fkClass", *_in(f"_class__{field}", [row["fkClass"].strip()]),
            f"{base} concepts are of class {row['fkClass'].strip()}")
    if _yes(row, "isStandardValidConcept"):
        add("isStandardValidConcept", *_in(f"_standard__{field}", [1]), f"{base} concepts are standard and valid")
    if _yes(row, "measureValueCompleteness"):
        add("measureValueCompleteness", "ExpectColumnValuesToNotBeNull", {"column": field}, f"{base} is filled")
    for check_type in ("standardConceptRecordCompleteness", "sourceConceptRecordCompleteness"):
        if _yes(row, check_type):
            add(check_type, "ExpectColumnValuesToNotBeInSet", {"column": field, "value_set": [0]},
                f"{base} is not concept 0")
    if _yes(row, "sourceValueCompleteness"):
        checks.append(_check("sourceValueCompleteness", f"dqd:{base}:source_values", field, base,
                             row["sourceValueCompletenessThreshold"], *_in("mapped_to_zero", [0]),
                             f"distinct {base} values are mapped to a concept other than 0"))
    low, high = (_bound(row[k], datatype, today) for k in ("plausibleValueLow", "plausibleValueHigh"))
    if low is not None:
        add("plausibleValueLow", "ExpectColumnValuesToBeBetween", {"column": field, "min_value": low},
            f"{base} >= {low}")
    if high is not None:
        add("plausibleValueHigh", "ExpectColumnValuesToBeBetween", {"column": field, "max_value": high},
            f"{base} <= {high}")
    if _yes(row, "plausibleTemporalAfter"):
        after_table = row["plausibleTemporalAfterTableName"].lower()
        after = "_birth_day" if after_table == "person" else row["plausibleTemporalAfterFieldName"].lower()
        if after_table in (name, "person"):
            add("plausibleTemporalAfter", "ExpectColumnPairValuesAToBeGreaterThanB",
                {"column_A": field, "column_B": after, "or_equal": True, "ignore_row_if": "either_value_is_missing"},
                f"{base} on or after {after_table}.{row['plausibleTemporalAfterFieldName'].lower()}")
    for check_type in ("plausibleDuringLife", "plausibleBeforeDeath"):
        if _yes(row, check_type):
            add(check_type, "ExpectColumnPairValuesAToBeGreaterThanB",
                {"column_A": "_death_limit", "column_B": field, "or_equal": False,
                 "ignore_row_if": "either_value_is_missing"}, f"{base} no later than 60 days after death")
    if _yes(row, "plausibleAfterBirth"):
        add("plausibleAfterBirth", "ExpectColumnPairValuesAToBeGreaterThanB",
            {"column_A": field, "column_B": "_birth_day", "or_equal": True, "ignore_row_if": "either_value_is_missing"},
            f"{base} on or after birth")
    if _yes(row, "withinVisitDates"):
        add("withinVisitDates", *_in(f"_within_visit__{field}", [1]), f"{base} within a week of its visit")
    end = row["plausibleStartBeforeEndFieldName"].strip().lower()
    if _yes(row, "plausibleStartBeforeEnd") and end not in ("", "na"):
        add("plausibleStartBeforeEnd", "ExpectColumnPairValuesAToBeGreaterThanB",
            {"column_A": end, "column_B": field, "or_equal": True, "ignore_row_if": "either_value_is_missing"},
            f"{base} on or before {end}")
    return checks


def _concept_checks(concepts_present: dict[tuple[str, str], set[int]]) -> list[Check]:
    """DQD concept-level checks for the concepts present in the data."""
    checks = []
    for row in spec_rows("Concept_Level"):
        table, field = row["cdmTableName"].lower(), row["cdmFieldName"].lower()
        if not row["conceptId"].strip().isdigit():
            continue  # concept lists: plausibleGenderUseDescendants rows, which need CONCEPT_ANCESTOR
        concept = int(row["conceptId"])
        if concept not in concepts_present.get((table, field), ()):
            continue
        frame, base, where = f"dqd:{table}", f"{table}.{field}:{concept}", f"{field}=={concept}"
        condition = {"row_condition": where, "condition_parser": "pandas"}
        label = f"{row['conceptName']} ({concept})"
        if row["plausibleGender"].strip():
            gender = row["plausibleGender"].strip()
            checks.append(_check("plausibleGender", frame, field, base, row["plausibleGenderThreshold"],
                                 *_in("_gender_concept_id", [GENDER_CONCEPTS[gender]], **condition),
                                 f"{label} only in {gender.lower()} persons"))
        if row["plausibleUnitConceptIds"].strip():
            units = [int(u) for u in row["plausibleUnitConceptIds"].split(",")]
            checks.append(_check("plausibleUnitConceptIds", frame, "unit_concept_id", base,
                                 row["plausibleUnitConceptIdsThreshold"], *_in("_unit_or_none", units, **condition),
                                 f"{label} has a plausible unit"))
        unit = row["unitConceptId"].strip()
        for check_type, key in (("plausibleValueLow", "min_value"), ("plausibleValueHigh", "max_value")):
            bound = row[check_type].strip()
            if bound and unit:
                checks.append(_check(check_type, frame, "value_as_number", f"{base}:unit{unit}",
                                     row[f"{check_type}Threshold"], "ExpectColumnValuesToBeBetween",
                                     {"column": "value_as_number", key: float(bound),
                                      "row_condition": f"{where} and unit_concept_id=={unit}",
                                      "condition_parser": "pandas"},
                                     f"{label} in unit {row['unitConceptName']} {'>=' if 'Low' in check_type else '<='} "
                                     f"{bound}"))
    return checks


def _row_count(conn: sa.Connection, table: sa.Table) -> int:
    return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


def _concepts_present(conn: sa.Connection, tables: dict[str, sa.Table], checked: set[str]) -> dict:
    fields = {(r["cdmTableName"].lower(), r["cdmFieldName"].lower()) for r in spec_rows("Concept_Level")}
    return {(table, field): set(conn.execute(sa.select(tables[table].c[field]).distinct()).scalars())
            for table, field in fields if table in checked}


def dqd_plan(conn: sa.Connection, tables: dict[str, sa.Table], today: dt.date) -> tuple[list[Check], dict[str, Frame]]:
    """The DQD checks that apply to the registry's current content, and the frames they run on."""
    field_rows: dict[str, list[dict]] = {}
    for row in spec_rows("Field_Level"):
        name = row["cdmTableName"].lower()
        if name in tables and name not in VOCABULARY_TABLES and row["cdmFieldName"].lower() in tables[name].c:
            field_rows.setdefault(name, []).append(row)
    existing = set(sa.inspect(conn).get_table_names(schema=tables["person"].schema))
    checked = {name for name in field_rows if name in existing and _row_count(conn, tables[name])}
    full_vocabulary = _row_count(conn, tables["vocabulary"]) > 0
    frames = _structure_frames(tables)
    checks = []
    for name in dict.fromkeys(r["cdmTableName"].lower() for r in spec_rows("Field_Level")):
        checks.append(_check("cdmTable", "dqd:cdm_tables", None, name, 0.0, *_in(name, [True]),
                             f"table {name} exists"))
        checks.append(_check("cdmField", "dqd:cdm_fields", None, name, 0.0, *_in(name, [True]),
                             f"every specified field of {name} exists"))
    for name in sorted(checked):
        frames[f"dqd:{name}"] = _table_frame(tables, name, field_rows[name])
        for row in field_rows[name]:
            checks += _field_checks(name, row, today, full_vocabulary)
            if _yes(row, "sourceValueCompleteness"):
                field, standard = row["cdmFieldName"].lower(), row["standardConceptFieldName"].strip().lower()
                frames[f"dqd:{name}.{field}:source_values"] = _source_value_frame(tables, name, field, standard)
    checks += _concept_checks(_concepts_present(conn, tables, checked))
    if "person" in checked:
        completeness = [r for r in spec_rows("Table_Level") if _yes(r, "measurePersonCompleteness")
                        and r["cdmTableName"].lower() in tables]
        frames["dqd:persons"] = _persons_frame(tables, [r["cdmTableName"].lower() for r in completeness])
        for row in completeness:
            name = row["cdmTableName"].lower()
            checks.append(_check("measurePersonCompleteness", "dqd:persons", None, name,
                                 row["measurePersonCompletenessThreshold"], *_in(f"_has__{name}", [1]),
                                 f"persons with at least one {name} record"))
        for row in spec_rows("Table_Level"):
            if _yes(row, "measureConditionEraCompleteness"):
                checks.append(_check("measureConditionEraCompleteness", "dqd:persons", None, "condition_era",
                                     row["measureConditionEraCompletenessThreshold"], *_in("_condition_era", [1]),
                                     "persons with conditions have a condition era"))
            if _yes(row, "measureObservationPeriodOverlap"):
                checks.append(_check("measureObservationPeriodOverlap", "dqd:persons", None, "observation_period",
                                     row["measureObservationPeriodOverlapThreshold"], *_in("_no_overlap", [1]),
                                     "observation periods neither overlap nor touch"))
    return checks, frames
