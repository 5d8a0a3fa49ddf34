"""The Post service: the write side of the home timeline, over HTTP (``post.service``).

``post.service.create_app(settings)`` builds it; run it with ``python -m post.service``.
Routes: ``tweets`` and ``users``; their connections and ``emit``: ``resources``; Snowflake
worker ids: ``worker_id`` (the lease loop) and ``leases`` (its SQL); ``idempotency``,
``follow_cap``, ``metrics``. What it shares with the query service is in ``api/``.
"""
