"""The committed data dictionary is the one the schema code generates, and documents everything."""
from __future__ import annotations

from registry_schema import SchemaNames, build_metadata
from registry_schema.dictionary import render_data_dictionary
from registry_schema.views import VIEW_DESCRIPTIONS
from tests.conftest import REPO


def test_committed_dictionary_is_current():
    committed = (REPO / "docs" / "data_dictionary.md").read_text(encoding="utf-8")
    assert committed == render_data_dictionary() + "\n", "run: dlmreg data-dictionary --out docs/data_dictionary.md"


def test_every_table_column_and_view_is_documented():
    text = render_data_dictionary()
    _, tables = build_metadata(SchemaNames.for_dialect("postgresql"))
    for name, table in tables.items():
        assert f"### `{table.schema}.{name}`" in text
        for column in table.columns:
            assert f"| `{column.name}` |" in text
    for view in VIEW_DESCRIPTIONS:
        assert f"### `dlm.{view}`" in text
    dlm_tables = [t for t in tables.values() if t.schema == "dlm"]
    assert all(t.comment for t in dlm_tables)
