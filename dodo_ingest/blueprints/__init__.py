"""Every ingestion blueprint of Dodo's JavaScript package (``@dodopayments/ingestion-blueprints`` 0.6.1), in Python.

They send the same events as the JavaScript functions (metadata key names, types and order), through one
:class:`~dodo_ingest.Ingestion` and its background batcher: batched requests, ids fixed once and reused on every
retry, the exit drain, the drop accounting of ``stats()``.

======================  ====================================  ==============================================
JavaScript              Python                                metadata sent
======================  ====================================  ==============================================
``ingestion.track``     :meth:`Ingestion.track`               yours
``trackAPICall``        :func:`~dodo_ingest.track_api_call`   yours (``endpoint``, ``method``, ...)
``trackObjectStorage``  :func:`track_object_storage`          ``bytes`` + yours
``trackStreamBytes``    :func:`track_stream_bytes`            ``bytes`` + yours
``trackTimeRange``      :func:`track_time_range`              ``durationMs``, ``durationSeconds``,
                                                              ``durationMinutes`` + yours
``createLLMTracker``    :func:`create_llm_tracker`            ``inputTokens``, ``outputTokens``,
                                                              ``totalTokens``, ``model`` + yours
``wrapLLMClient``       :func:`wrap_llm_client`               the same
``DodoClient``          :class:`DodoClient`                   your events as they are
======================  ====================================  ==============================================

Python additions: :func:`measure_time_range` (a ``with`` block or decorator that measures the time itself),
:func:`meter_upload` and :func:`meter_stream` (count the bytes of an upload or a streamed body as they flow, in
WSGI, Flask and Django views), :func:`count_bytes`, and health checks that tell a rejected key from a healthy one.
"""

from dodo_ingest.blueprints.client import DodoClient
from dodo_ingest.blueprints.counting import CountingAsyncIterator, CountingIterator, CountingReader, count_bytes
from dodo_ingest.blueprints.llm import LLMTracker, TokenUsage, create_llm_tracker, extract_usage, wrap_llm_client
from dodo_ingest.blueprints.object_storage import MeteredUpload, meter_upload, track_object_storage
from dodo_ingest.blueprints.stream import meter_stream, track_stream_bytes
from dodo_ingest.blueprints.time_range import TimeRange, measure_time_range, track_time_range
from dodo_ingest.transport import HealthCheck, check_health

__all__ = [
    "CountingAsyncIterator",
    "CountingIterator",
    "CountingReader",
    "DodoClient",
    "HealthCheck",
    "LLMTracker",
    "MeteredUpload",
    "TimeRange",
    "TokenUsage",
    "check_health",
    "count_bytes",
    "create_llm_tracker",
    "extract_usage",
    "measure_time_range",
    "meter_stream",
    "meter_upload",
    "track_object_storage",
    "track_stream_bytes",
    "track_time_range",
    "wrap_llm_client",
]
