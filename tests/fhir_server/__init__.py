"""A FHIR R4 TEST server for the test suite. It is NOT for production use.

It runs in-process on 127.0.0.1 (ephemeral port), keeps every resource in memory, and exists so that
the extraction code can be tested against realistic server behaviour: opaque paging links, the Bulk
Data async ``$export`` pattern, SMART Backend Services tokens, HTTP Basic/Bearer auth and injected
faults (429, 503, dropped connections, truncated or non-JSON bodies, expired tokens). It has no
persistence, no real security (self-signed TLS, keys held in memory) and no performance goals.

Usage::

    from tests.fhir_server import FhirTestServer, Faults

    with FhirTestServer(resources, auth="smart", page_size=50) as server:
        server.register_smart_client("registry", public_jwk)
        server.faults = Faults(every=5, kinds=("429", "drop"))
        ... httpx.get(f"{server.url}/Patient") ...

See ``FhirTestServer`` for the full behaviour.
"""
from tests.fhir_server.faults import FAULT_KINDS, Faults
from tests.fhir_server.server import FhirTestServer

__all__ = ["FAULT_KINDS", "Faults", "FhirTestServer"]
