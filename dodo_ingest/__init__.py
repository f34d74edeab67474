"""dodo-ingest: meter API calls for usage-based billing with Dodo Payments.

The blueprint API (mirroring Dodo's JavaScript ``Ingestion`` / ``trackAPICall`` / ``createBatch``)::

    from dodo_ingest import Ingestion, track_api_call, create_batch

    ingestion = Ingestion(api_key="...", environment="test_mode", event_name="api_call")
    track_api_call(ingestion, customer_id="cus_123", metadata={"endpoint": "/api/v1/users", "method": "GET"})
    batch = create_batch(ingestion, max_size=100, flush_interval=5.0)
    batch.add(customer_id="cus_123", metadata={...})
    batch.flush(timeout=5.0); batch.cleanup()

Framework integrations: :mod:`dodo_ingest.wsgi`, :mod:`dodo_ingest_flask`, :mod:`dodo_ingest_django`.
"""

from dodo_ingest._version import __version__
from dodo_ingest.batcher import Batcher
from dodo_ingest.delivery import DeliveryFailure
from dodo_ingest.errors import (
    AuthenticationError,
    ConfigurationError,
    DeliveryError,
    DodoIngestError,
    ValidationError,
)
from dodo_ingest.events import Event
from dodo_ingest.ingestion import Ingestion, create_batch, track_api_call
from dodo_ingest.request import annotate
from dodo_ingest.stats import Stats

__all__ = [
    "AuthenticationError",
    "Batcher",
    "ConfigurationError",
    "DeliveryError",
    "DeliveryFailure",
    "DodoIngestError",
    "Event",
    "Ingestion",
    "Stats",
    "ValidationError",
    "__version__",
    "annotate",
    "create_batch",
    "track_api_call",
]
