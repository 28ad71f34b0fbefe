"""Media fetching, the core side: the durable job queue (`jobs`) and the worker (`worker`).

The worker depends on narrow interfaces only: `ingest.transports.fetching` (one MediaSource per
provider), `ingest.objectstore` (where bytes go), the channel directory (credentials) and SQL.
"""
