"""The stage's on-disk index (etl.stage.index): what stage asks of it, key by key."""
from etl.stage.index import StagingIndex

A, B = b"\x01" * 32, b"\x02" * 32


def test_lookup_distinguishes_staged_seen_and_unknown():
    with StagingIndex() as index:
        index.load([("Observation", "o1", A.hex()), ("Observation", "o2", A.hex())])
        assert index.lookup(("Observation", "o1")) == (A, None)       # staged, not seen in this run
        assert index.lookup(("Observation", "nope")) == (None, None)  # unknown
        assert index.lookup(("Condition", "o1")) == (None, None)      # the type is part of the key
        index.mark(("Observation", "o1"), B, "2024-01-02T00:00:00Z")
        assert index.lookup(("Observation", "o1")) == (B, "2024-01-02T00:00:00Z")
        index.mark(("Observation", "new"), A, "")                     # a kept copy without lastUpdated
        assert index.lookup(("Observation", "new")) == (A, "")
        index.load([("Observation", "o1", A.hex()), ("Observation", "late", A.hex())])   # a key known is kept
        assert index.lookup(("Observation", "o1")) == (B, "2024-01-02T00:00:00Z")
        assert index.lookup(("Observation", "late")) == (A, None)


def test_unseen_batches_cover_every_unseen_key_once_while_dropping():
    staged = [("Observation", f"o{n:04d}", A.hex()) for n in range(1234)] + [("Patient", "p1", A.hex())]
    with StagingIndex() as index:
        index.load(staged)
        for _, resource_id, _ in staged[::3]:
            index.mark(("Observation", resource_id), A, "x")
        got = []
        for batch in index.unseen_batches(100):
            assert len(batch) <= 100
            got += batch
            index.drop(batch)
        expected = {(t, i) for t, i, _ in staged} - {("Observation", i) for _, i, _ in staged[::3]}
        assert sorted(got) == sorted(expected) and len(got) == len(expected)
        assert list(index.unseen_batches(100)) == []
        assert index.lookup(("Observation", "o0001")) == (None, None)   # dropped
        assert index.lookup(("Observation", "o0000")) == (A, "x")       # seen, kept


def test_ids_and_dates_with_lone_surrogates_round_trip():
    key = ("Observation", "id-\udc80")
    with StagingIndex() as index:
        index.load([(*key, A.hex())])
        assert [batch for batch in index.unseen_batches(10)] == [[key]]
        index.mark(key, B, "2024-\ud800")
        assert index.lookup(key) == (B, "2024-\ud800")
