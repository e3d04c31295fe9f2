"""The registry schema equals the OMOP CDM v5.4 specification, on SQLite and PostgreSQL."""
from __future__ import annotations

import csv
import filecmp

import pytest
import sqlalchemy as sa

from etl.registry import open_registry
from registry_schema.cdm import FIELD_SPEC, SPEC_DIR, load_field_spec
from tests.conftest import SHARED_REFERENCE

TYPE_FAMILY = {"integer": "int", "float": "float", "date": "date", "datetime": "datetime"}


def _field(row: dict) -> str:
    """The spec quotes reserved words ("offset"); the column itself is named without the quotes."""
    return row["cdmFieldName"].strip('"').lower()


def _family(datatype: str) -> str:
    kind = datatype.lower()
    return TYPE_FAMILY.get(kind, "text" if kind.startswith("varchar") else kind)


def _db_family(column_type: sa.types.TypeEngine) -> str:
    if isinstance(column_type, sa.Integer):
        return "int"
    if isinstance(column_type, (sa.Float, sa.Numeric)):
        return "float"
    if isinstance(column_type, sa.DateTime):
        return "datetime"
    if isinstance(column_type, sa.Date):
        return "date"
    if isinstance(column_type, (sa.String, sa.Text)):
        return "text"
    return type(column_type).__name__


@pytest.mark.skipif(not SHARED_REFERENCE.exists(), reason="shared/reference not beside the checkout")
def test_shipped_spec_is_the_official_one():
    for name in ("OMOP_CDMv5.4_Field_Level.csv", "OMOP_CDMv5.4_Table_Level.csv"):
        assert filecmp.cmp(SPEC_DIR / name, SHARED_REFERENCE / "omop_cdm_v5.4" / name, shallow=False)


def test_every_spec_table_and_column_exists_with_type_nullability_and_key(registry_url):
    registry = open_registry(registry_url)
    inspector = sa.inspect(registry.engine)
    schema = registry.schemas.cdm
    with FIELD_SPEC.open(newline="") as handle:
        spec = list(csv.DictReader(handle))
    tables = {row["cdmTableName"].lower() for row in spec}
    assert tables <= set(inspector.get_table_names(schema=schema))
    assert len(tables) == 39
    columns = {t: {c["name"]: c for c in inspector.get_columns(t, schema=schema)} for t in tables}
    for row in spec:
        table, field = row["cdmTableName"].lower(), _field(row)
        column = columns[table].get(field)
        assert column is not None, f"{table}.{field} missing"
        assert _db_family(column["type"]) == _family(row["cdmDatatype"]), f"{table}.{field} type"
        required = row["isRequired"] == "Yes" or row["isPrimaryKey"] == "Yes"
        assert column["nullable"] is (not required), f"{table}.{field} nullability"
        if row["cdmDatatype"].lower().startswith("varchar(") and "max" not in row["cdmDatatype"].lower():
            assert column["type"].length == int(row["cdmDatatype"][8:-1]), f"{table}.{field} length"
    for table in tables:
        expected = {_field(r) for r in spec
                    if r["cdmTableName"].lower() == table and r["isPrimaryKey"] == "Yes"}
        assert set(inspector.get_pk_constraint(table, schema=schema)["constrained_columns"]) == expected
        assert set(columns[table]) == {_field(r) for r in spec if r["cdmTableName"].lower() == table}


def test_postgres_keeps_cdm_dlm_and_staging_apart(pg_url):
    registry = open_registry(pg_url)
    inspector = sa.inspect(registry.engine)
    assert "person" in inspector.get_table_names(schema="cdm")
    assert "dlm_lesion" in inspector.get_table_names(schema="dlm")
    assert "fhir_resource" in inspector.get_table_names(schema="staging")
    assert {"dlm_lesion_v", "dlm_patient_survival_v"} <= set(inspector.get_view_names(schema="dlm"))


def test_opening_twice_is_harmless(registry_url):
    open_registry(registry_url)
    open_registry(registry_url)


def test_spec_has_the_oncology_tables():
    assert {"episode", "episode_event", "note", "note_nlp"} <= {f.table for f in load_field_spec()}


def test_constraints_step_creates_indexes_and_postgres_foreign_keys(registry_url):
    from registry_schema.constraints import apply_constraints, foreign_keys, index_columns

    registry = open_registry(registry_url)
    created = apply_constraints(registry.engine, registry.schemas, registry.tables)
    assert created["indexes"] == len(index_columns(registry.tables)) > 30
    assert apply_constraints(registry.engine, registry.schemas, registry.tables) == {"indexes": 0, "foreign_keys": 0}
    inspector = sa.inspect(registry.engine)
    indexed = {(t, tuple(i["column_names"])) for t in registry.tables
               for i in inspector.get_indexes(t, schema=registry.tables[t].schema)}
    assert ("condition_occurrence", ("condition_concept_id",)) in indexed
    if registry.engine.dialect.name != "postgresql":
        return
    assert created["foreign_keys"] == len(foreign_keys()) > 60
    assert not any(k.target_table == "concept" for k in foreign_keys())
    person = registry.tables["person"]
    orphan = {"condition_occurrence_id": 1, "person_id": 999, "condition_concept_id": 0,
              "condition_start_date": sa.func.current_date(), "condition_type_concept_id": 0}
    with pytest.raises(sa.exc.IntegrityError):
        with registry.engine.begin() as conn:
            conn.execute(registry.tables["condition_occurrence"].insert().values(**orphan))
    with registry.engine.begin() as conn:  # deferred: parent may come after the child in one transaction
        conn.execute(registry.tables["condition_occurrence"].insert().values(**orphan))
        conn.execute(person.insert().values(person_id=999, gender_concept_id=0, year_of_birth=1950,
                                            race_concept_id=0, ethnicity_concept_id=0))
