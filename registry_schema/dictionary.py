"""The data dictionary, generated from the schema code (never written by hand): every table, column
and view of the registry with type, requiredness, keys, references and description."""
from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from registry_schema.constraints import foreign_keys
from registry_schema.registry import SchemaNames, build_metadata
from registry_schema.views import VIEW_DESCRIPTIONS, view_definitions

SECTIONS = (
    ("cdm", "OMOP CDM v5.4", "Generated from the OHDSI field-level specification (descriptions are its user guidance)."),
    ("dlm", "DLM extension and run bookkeeping", "Lesion-level tables keyed to OMOP ids, and the records of every run."),
    ("staging", "Staging", "Raw FHIR of the cohort, de-identified."),
)


def _cell(text: str | None) -> str:
    return " ".join((text or "").split()).replace("|", "\\|")


def _type(column: sa.Column) -> str:
    return column.type.compile(dialect=postgresql.dialect()).lower()


def render_data_dictionary() -> str:
    """Markdown for docs/data_dictionary.md (PostgreSQL schema names; SQLite uses one namespace)."""
    schemas = SchemaNames.for_dialect("postgresql")
    _, tables = build_metadata(schemas)
    references = {(k.table, k.column): f"{k.target_table}.{k.target_column}" for k in foreign_keys(True)}
    lines = ["# Registry data dictionary", "",
             "Generated from `registry_schema/` by `dlmreg data-dictionary`; do not edit by hand.",
             "On PostgreSQL the tables live in the schemas named below; on SQLite all share one namespace.", ""]
    for schema, title, intro in SECTIONS:
        lines += [f"## `{schema}`: {title}", "", intro, ""]
        for name, table in tables.items():
            if table.schema != schema:
                continue
            lines += [f"### `{schema}.{name}`", "", _cell(table.comment) or "(no description)", "",
                      "| column | type | required | key | references | description |",
                      "|---|---|---|---|---|---|"]
            for column in table.columns:
                lines.append(f"| `{column.name}` | {_type(column)} | {'yes' if not column.nullable else ''} | "
                             f"{'PK' if column.primary_key else ''} | {references.get((name, column.name), '')} | "
                             f"{_cell(column.comment)} |")
            lines.append("")
    lines += ["## Views (`dlm` schema)", ""]
    for name, select in view_definitions(tables).items():
        lines += [f"### `dlm.{name}`", "", VIEW_DESCRIPTIONS[name], "", "| column | from |", "|---|---|"]
        for column in select.selected_columns:
            source = f"{column.table.name}.{column.name}" if getattr(column, "table", None) is not None else ""
            lines.append(f"| `{column.name}` | {source} |")
        lines.append("")
    return "\n".join(lines)
