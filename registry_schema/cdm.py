"""OMOP CDM v5.4 tables as SQLAlchemy Core, generated from the OHDSI field-level specification CSV.

Generating (not hand-writing) the tables keeps names, types, nullability and primary keys identical to
the specification OHDSI tools expect. Foreign keys and indexes are created as a separate step
(bulk loads run before constraints, as in OHDSI CommonDataModel's DDL).
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import sqlalchemy as sa

SPEC_DIR = Path(__file__).parent / "spec"
FIELD_SPEC = SPEC_DIR / "OMOP_CDMv5.4_Field_Level.csv"
TABLE_SPEC = SPEC_DIR / "OMOP_CDMv5.4_Table_Level.csv"
# Tables without person_id whose rows belong to one person through a parent row (CDM v5.4: a NOTE_NLP row
# through its NOTE, an EPISODE_EVENT row through its EPISODE): table -> (column, parent table, parent id).
CHILD_TABLES = {"note_nlp": ("note_id", "note", "note_id"), "episode_event": ("episode_id", "episode", "episode_id")}


@dataclass(frozen=True)
class FieldSpec:
    """One row of the CDM field-level specification."""

    table: str
    field: str
    required: bool
    datatype: str
    primary_key: bool
    fk_table: str | None
    fk_field: str | None
    description: str


@lru_cache(maxsize=1)
def load_field_spec() -> tuple[FieldSpec, ...]:
    """Read the field-level spec, in specification order."""
    with FIELD_SPEC.open(newline="", encoding="utf-8") as handle:
        return tuple(
            FieldSpec(
                table=row["cdmTableName"].lower(),
                # The spec writes reserved words quoted ("offset"); the column is named without quotes.
                field=row["cdmFieldName"].strip('"').lower(),
                required=row["isRequired"] == "Yes",
                datatype=row["cdmDatatype"],
                primary_key=row["isPrimaryKey"] == "Yes",
                fk_table=None if row["fkTableName"] in ("", "NA") else row["fkTableName"].lower(),
                fk_field=None if row["fkFieldName"] in ("", "NA") else row["fkFieldName"].lower(),
                description=row["userGuidance"] if row["userGuidance"] != "NA" else "",
            )
            for row in csv.DictReader(handle)
        )


@lru_cache(maxsize=1)
def table_descriptions() -> dict[str, str]:
    """Table name -> description from the table-level spec."""
    with TABLE_SPEC.open(newline="", encoding="utf-8") as handle:
        return {row["cdmTableName"].lower(): row["tableDescription"] for row in csv.DictReader(handle)}


def sql_type(datatype: str) -> sa.types.TypeEngine:
    """Map a CDM spec datatype to a portable SQLAlchemy type."""
    kind = datatype.strip().lower()
    if kind == "integer":
        # OMOP ids outgrow 32 bits in national registries; BigInteger is what OHDSI recommends for keys.
        return sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    if kind == "float":
        return sa.Float()
    if kind == "date":
        return sa.Date()
    if kind == "datetime":
        return sa.DateTime()
    match = re.fullmatch(r"varchar\((\d+|max)\)", kind)
    if match:
        return sa.Text() if match.group(1) == "max" else sa.String(int(match.group(1)))
    raise ValueError(f"unknown CDM datatype {datatype!r}")


def cdm_tables(metadata: sa.MetaData, schema: str | None = None) -> dict[str, sa.Table]:
    """Add every CDM v5.4 table (columns, nullability, primary keys) to `metadata`."""
    by_table: dict[str, list[FieldSpec]] = {}
    for spec in load_field_spec():
        by_table.setdefault(spec.table, []).append(spec)
    tables = {}
    for name, fields in by_table.items():
        columns = [
            sa.Column(
                f.field,
                sql_type(f.datatype),
                primary_key=f.primary_key,
                nullable=not (f.required or f.primary_key),
                autoincrement=False,
                comment=f.description[:1000] or None,
            )
            for f in fields
        ]
        tables[name] = sa.Table(name, metadata, *columns, schema=schema, comment=table_descriptions().get(name))
    return tables


def foreign_key_specs() -> list[FieldSpec]:
    """Fields that reference another CDM table (for the constraint step and the FK quality checks)."""
    return [f for f in load_field_spec() if f.fk_table and f.fk_field]
