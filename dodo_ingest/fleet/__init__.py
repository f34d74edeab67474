"""The shared buffer on Redis Streams (``buffer_url``) and the forwarders that deliver it within one budget.

- :mod:`~dodo_ingest.fleet.stream`: the Redis keys, the client, and the writer the flush thread uses.
- :mod:`~dodo_ingest.fleet.budget`: the fleet-wide request budget (a moving window of the ``limits`` library).
- :mod:`~dodo_ingest.fleet.forwarder`: ``dodo-ingest forward``: consumer group reader, sender, acknowledger.
- :mod:`~dodo_ingest.fleet.lease`: the embedded forwarder (``forwarder="embedded"``), elected by a Redis lock.

Needs the ``fleet`` extra (``pip install 'dodo-ingest[fleet]'``).
"""
