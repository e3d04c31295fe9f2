"""Validate a FHIR resource with the fhir.resources R4B models, element by element, remembering values seen.

Validating a whole resource with `Model.model_validate` costs about 110 µs per resource of the synthetic
cohort (a FHIR model per nested element, each with Python validators): three quarters of the stage's
CPU time at 10,000 patients (76 of 97 s). Most element values repeat: the same `code`, `category`,
`subject` reference, `status` or `meta` appear in thousands of resources, and whether a value is a valid
element of a given type depends only on the value. So each top-level element (each item of a repeating
element) is validated on its own with the type the model declares for it, a value found valid is
remembered (a bounded cache), and the checks the model makes on the resource as a whole are made here
from the model's own field metadata:

| rule | check | as fhir.resources |
|---|---|---|
| V1 | every top-level key is an element of the model (or `resourceType`) | `extra="forbid"` |
| V2 | each element value validates as the field's declared type; each item of a repeating complex element as its item type, and a null item is rejected | field types; `reject_null_complex_elements` |
| V3 | a required complex element is present (`field.is_required()`) | pydantic required field |
| V4 | a required primitive (`element_required`) has a value or a `_name` extension | `_validate_required_primitive_elements` |
| V5 | at most one element of each choice `name[x]`, exactly one if the choice is required | `_validate_one_of_many` |

Same verdicts as `model_validate` (tests/test_stage_bulk.py compares both on the HL7 R4 examples and on
mutations of them), at about 22 µs per resource; the reason names the element. `ModelValidator` is the
plain whole-model validation, kept as the reference and chosen with `DLMREG_FHIR_VALIDATION=model`.
"""
from __future__ import annotations

import os
import types
import typing
from functools import lru_cache

from fhir.resources.R4B import get_fhir_model_class
from pydantic import TypeAdapter, ValidationError

MODES = ("elements", "model")
CACHE_ENTRIES = 50_000       # remembered valid values; the cache is emptied when full
CACHE_KEY_CHARS = 512        # longer values (narratives, attachments) are validated every time, not remembered


class UnknownType(Exception):
    """The resourceType has no R4B model."""


def validation_mode() -> str:
    mode = os.environ.get("DLMREG_FHIR_VALIDATION", "elements").strip().lower() or "elements"
    if mode not in MODES:
        raise ValueError(f"DLMREG_FHIR_VALIDATION={mode!r}: expected one of {', '.join(MODES)}")
    return mode


def make_validator(mode: str | None = None):
    """The validator for `mode` (default: `DLMREG_FHIR_VALIDATION`, else `elements`)."""
    return ModelValidator() if (mode or validation_mode()) == "model" else ElementValidator()


def model_class(resource_type: str):
    try:
        return get_fhir_model_class(resource_type)
    except (KeyError, ValueError, AttributeError) as exc:
        raise UnknownType(resource_type) from exc


def _error_text(exc: ValidationError, prefix: tuple = ()) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in (*prefix, *err.get("loc", ())))
    return f"{where}: {err.get('msg', 'invalid')}"[:300]


class ModelValidator:
    """Whole-resource `model_validate` (the reference; slow)."""

    def check(self, resource: dict) -> str | None:
        """None if valid, else the reason (element path: message). Raises UnknownType."""
        model = model_class(resource["resourceType"])
        try:
            model.model_validate(resource)
        except ValidationError as exc:
            return _error_text(exc)
        except (ValueError, TypeError, RecursionError) as exc:
            return type(exc).__name__
        return None


def _list_item(annotation):
    """X for Optional[List[X]] / List[X], else None."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            return None
        annotation = args[0]
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        return item
    return None


class _Element:
    __slots__ = ("alias", "field", "_value", "_item", "is_list", "is_complex")

    def __init__(self, alias: str, field):
        self.alias, self.field = alias, field
        self._value = self._item = None
        self.is_list = _list_item(field.annotation) is not None
        self.is_complex = "abc." in str(field.annotation)    # fhir_core model types (CodeableConceptType, ...)

    def value_adapter(self) -> TypeAdapter:
        if self._value is None:
            annotation = self.field.annotation
            if self.field.metadata:
                annotation = typing.Annotated[(annotation, *self.field.metadata)]
            self._value = TypeAdapter(annotation)
        return self._value

    def item_adapter(self) -> TypeAdapter:
        if self._item is None:
            self._item = TypeAdapter(_list_item(self.field.annotation))
        return self._item


class _Spec:
    """What the model of one resource type declares: elements by JSON name, required ones, choices."""

    def __init__(self, resource_type: str):
        model = model_class(resource_type)
        fields = model.model_fields
        aliases = {name: (f.alias or name) for name, f in fields.items()}
        self.elements = {aliases[name]: _Element(aliases[name], f) for name, f in fields.items()}
        self.present: list[str] = []                      # V3
        self.required: list[tuple[str, str | None]] = []  # V4: (element, its `_element` sibling)
        choices: dict[str, tuple[list[str], bool]] = {}    # V5
        for name, f in fields.items():
            alias, extra = aliases[name], f.json_schema_extra or {}
            if f.is_required():
                self.present.append(alias)
            elif extra.get("element_required"):
                self.required.append((alias, "_" + alias if "_" + alias in self.elements else None))
            if extra.get("one_of_many"):
                choices.setdefault(extra["one_of_many"], ([], extra.get("one_of_many_required") is True))[0].append(alias)
        self.choices = [(prefix, members, required) for prefix, (members, required) in choices.items()]


@lru_cache(maxsize=None)
def _spec(resource_type: str) -> _Spec:
    return _Spec(resource_type)


class ElementValidator:
    """Element-wise validation with remembered valid values (rules V1-V5 of the module docstring)."""

    def __init__(self, cache_entries: int = CACHE_ENTRIES):
        self.valid: set = set()
        self.cache_entries = cache_entries

    def _validate(self, resource_type: str, alias: str, item: bool, adapter: TypeAdapter, value) -> None:
        # repr is an exact key for parsed JSON (it tells 1, 1.0, True and "1" apart) and 3x cheaper than json.dumps.
        text = repr(value)
        key = (resource_type, alias, item, text) if len(text) <= CACHE_KEY_CHARS else None
        if key is not None and key in self.valid:
            return
        adapter.validate_python(value)
        if key is not None:
            if len(self.valid) >= self.cache_entries:
                self.valid.clear()
            self.valid.add(key)

    def check(self, resource: dict) -> str | None:
        """None if valid, else the reason (element path: message). Raises UnknownType."""
        resource_type = resource["resourceType"]
        spec = _spec(resource_type)
        for alias, value in resource.items():
            if alias == "resourceType":
                continue
            element = spec.elements.get(alias)
            if element is None:
                return f"{alias}: Extra inputs are not permitted"
            index = None
            try:
                if element.is_list and isinstance(value, list):
                    adapter = element.item_adapter()
                    for index, item in enumerate(value):
                        if item is None and element.is_complex:
                            return f"{alias}: None is not allowed as an element of {alias}"
                        self._validate(resource_type, alias, True, adapter, item)
                else:
                    self._validate(resource_type, alias, False, element.value_adapter(), value)
            except ValidationError as exc:
                return _error_text(exc, (alias,) if index is None else (alias, index))
            except (ValueError, TypeError, RecursionError) as exc:
                return f"{alias}: {type(exc).__name__}"
        for alias in spec.present:
            if alias not in resource:
                return f"{alias}: Field required"
        for alias, extension in spec.required:
            if resource.get(alias) is None:
                sibling = resource.get(extension) if extension else None
                if not (isinstance(sibling, dict) and sibling.get("extension")):
                    return f"{alias}: Field required"
        for prefix, members, required in spec.choices:
            given = [m for m in members if resource.get(m) is not None]
            if len(given) > 1:
                return f"{prefix}[x]: only one of {', '.join(given)} may be given"
            if required and not given:
                return f"{prefix}[x]: one of {', '.join(members)} is required"
        return None
