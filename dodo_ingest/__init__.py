"""dodo-ingest: meter API calls for usage-based billing with Dodo Payments.

The blueprint API (mirroring Dodo's JavaScript ``Ingestion`` / ``trackAPICall`` / ``createBatch``)::

    from dodo_ingest import Ingestion, track_api_call, create_batch

    ingestion = Ingestion(api_key="...", environment="test_mode", event_name="api_call")
    track_api_call(ingestion, customer_id="cus_123", metadata={"endpoint": "/api/v1/users", "method": "GET"})
    batch = create_batch(ingestion, max_size=100, flush_interval=5.0)
    batch.add(customer_id="cus_123", metadata={...})
    batch.flush(timeout=5.0); batch.cleanup()

The other blueprints of Dodo's JavaScript package (object storage, stream bytes, time range, LLM tokens,
``DodoClient``) are in :mod:`dodo_ingest.blueprints`; their main functions are exported here too.

Framework integrations: :mod:`dodo_ingest.wsgi`, :mod:`dodo_ingest_flask`, :mod:`dodo_ingest_django`.
"""

from dodo_ingest._version import __version__
from dodo_ingest.batcher import Batcher
from dodo_ingest.blueprints import (
    DodoClient,
    LLMTracker,
    create_llm_tracker,
    measure_time_range,
    meter_stream,
    meter_upload,
    track_object_storage,
    track_stream_bytes,
    track_time_range,
    wrap_llm_client,
)
from dodo_ingest.delivery import DeliveryFailure
from dodo_ingest.errors import (
    APIError,
    AuthenticationError,
    ConfigurationError,
    DeliveryError,
    DodoIngestError,
    DodoIngestionError,
    ProviderError,
    ValidationError,
)
from dodo_ingest.events import Event
from dodo_ingest.ingestion import Ingestion, create_batch, track_api_call
from dodo_ingest.request import annotate
from dodo_ingest.stats import Stats

__all__ = [
    "APIError",
    "AuthenticationError",
    "Batcher",
    "ConfigurationError",
    "DeliveryError",
    "DeliveryFailure",
    "DodoClient",
    "DodoIngestError",
    "DodoIngestionError",
    "Event",
    "Ingestion",
    "LLMTracker",
    "ProviderError",
    "Stats",
    "ValidationError",
    "__version__",
    "annotate",
    "create_batch",
    "create_llm_tracker",
    "measure_time_range",
    "meter_stream",
    "meter_upload",
    "track_api_call",
    "track_object_storage",
    "track_stream_bytes",
    "track_time_range",
    "wrap_llm_client",
]
