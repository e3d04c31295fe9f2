"""Turn one raw record into a validated resource dict, or a reason it cannot be loaded.

Validation uses the fhir.resources R4B models (they parse R4 JSON for the resources the registry uses),
element by element with remembered values (etl.stage.validate: same verdicts, a fraction of the cost);
the dict is kept for mapping because the models add nothing the transforms need.

`parse_records` validates in worker processes (etl.workers) when there are any: the records go to them in
chunks, a few chunks ahead, and come back in input order, so staging sees what it would see validating
them itself. A worker returns its verdict, or what `prepare` makes of a valid resource (staging's
de-identified row: etl.stage.prepare); without `prepare` the run's own process parses the valid records
again (JSON parsing is a small part of validation's cost, and cheaper than sending the parsed dict back).
"""
from __future__ import annotations

import itertools
import json
import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from etl.extract import RawRecord
from etl.stage.validate import ElementValidator, ModelValidator, UnknownType, make_validator
from etl.workers import process_pool, usable_workers

log = logging.getLogger(__name__)
CHUNK_RECORDS = 1000       # records per task sent to a worker (an input of one chunk starts no worker) ...
CHUNK_CHARS = 4_000_000    # ... or fewer, when their text reaches this many characters (a few chunks are in flight)


@dataclass(frozen=True)
class Rejected:
    reason: str
    resource_type: str | None = None


_DEFAULT = ElementValidator()


def parse_record(record: RawRecord, validator: ElementValidator | ModelValidator | None = None) -> dict | Rejected:
    """Parse and validate; the returned dict is the resource as received.

    `validator`: an etl.stage.validate validator (one per stage, so its remembered values are that run's).
    """
    if record.expected_type and record.expected_type.startswith("!"):
        return Rejected(record.expected_type[1:])
    try:
        resource = json.loads(record.text)
    except json.JSONDecodeError as exc:
        return Rejected(f"not valid JSON: {exc.msg} at char {exc.pos}")
    except (ValueError, RecursionError) as exc:  # an integer of over 4300 digits; nesting too deep
        return Rejected("not valid JSON: " + ("nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]))
    if not isinstance(resource, dict):
        return Rejected("not a JSON object")
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str) or not resource_type:
        return Rejected("missing resourceType")
    if record.expected_type and resource_type != record.expected_type:
        return Rejected(f"resourceType {resource_type[:64]} in a file of {record.expected_type}", resource_type)
    if not isinstance(resource.get("id"), str) or not resource["id"]:
        return Rejected("missing id", resource_type)
    try:
        problem = (validator or _DEFAULT).check(resource)
    except UnknownType:
        return Rejected(f"unknown resourceType {resource_type[:64]}", resource_type[:64])
    if problem is not None:
        return Rejected(f"invalid {resource_type}: {problem}", resource_type)
    return resource


def parse_records(records: Iterable[RawRecord], validation: str | None = None, workers: int | None = None,
                  chunk: int | None = None, prepare: Callable[[dict], object] | None = None) -> Iterator[tuple]:
    """(record, parse_record(record)) for each record, in order, or (record, prepare(resource)) for a valid
    one when `prepare` (picklable) is given; validated, and prepared, by `workers` processes (default
    etl.workers.usable_workers) when the input holds more than one chunk. `validation` as in
    etl.stage.validate.make_validator. A worker that dies is logged, and the rest is validated here."""
    workers = usable_workers(workers)
    validator = make_validator(validation)
    chunks = _chunks(records, chunk or CHUNK_RECORDS) if workers >= 1 else iter([records])
    first = next(chunks, [])
    second = next(chunks, None) if workers >= 1 else None
    if second is None:   # no workers, or one chunk at most: not worth starting them
        for record in first:
            yield record, _parsed(record, validator, prepare)
        return
    chunks = itertools.chain([first, second], chunks)
    with process_pool(workers, _start_worker, (validation, prepare)) as pool:
        ahead: deque = deque()   # [chunk, its future]: a chunk leaves only once its answers are in
        try:
            for part in chunks:
                ahead.append([part, None])
                ahead[-1][1] = pool.submit(_verdicts, part)
                if len(ahead) > 2 * workers:
                    yield from _answers(ahead)
            while ahead:
                yield from _answers(ahead)
        except BrokenProcessPool:
            log.warning("a validating worker process died; validating the remaining records in the main process")
            for part, _ in ahead:
                for record in part:
                    yield record, _parsed(record, validator, prepare)
            for record in itertools.chain.from_iterable(chunks):
                yield record, _parsed(record, validator, prepare)


def _parsed(record: RawRecord, validator, prepare: Callable[[dict], object] | None):
    parsed = parse_record(record, validator)
    return parsed if prepare is None or isinstance(parsed, Rejected) else prepare(parsed)


def _chunks(records: Iterable[RawRecord], size: int) -> Iterator[list[RawRecord]]:
    """Lists of at most `size` records and (but for a single larger record) CHUNK_CHARS characters."""
    part: list[RawRecord] = []
    chars = 0
    for record in records:
        if part and (len(part) >= size or chars + len(record.text) > CHUNK_CHARS):
            yield part
            part, chars = [], 0
        part.append(record)
        chars += len(record.text)
    if part:
        yield part


def _answers(ahead: deque) -> Iterator[tuple[RawRecord, dict | Rejected]]:
    """The first chunk's records with their verdicts (raises BrokenProcessPool, the chunk kept, if it has none)."""
    verdicts = ahead[0][1].result()
    part = ahead.popleft()[0]
    for record, verdict in zip(part, verdicts):   # None: valid, and not prepared in the worker
        yield record, (verdict if verdict is not None else json.loads(record.text))


_WORKER_VALIDATOR: ElementValidator | ModelValidator | None = None
_WORKER_PREPARE: Callable[[dict], object] | None = None


def _start_worker(validation: str | None, prepare: Callable[[dict], object] | None = None) -> None:
    global _WORKER_VALIDATOR, _WORKER_PREPARE
    _WORKER_VALIDATOR, _WORKER_PREPARE = make_validator(validation), prepare


def _verdicts(part: list[RawRecord]) -> list:
    """In a worker: for each record why it was rejected, else what `prepare` made of it (None without one)."""
    out = []
    for record in part:
        parsed = _parsed(record, _WORKER_VALIDATOR, _WORKER_PREPARE)
        out.append(None if isinstance(parsed, dict) else parsed)   # a dict is parsed again by the run's process
    return out
