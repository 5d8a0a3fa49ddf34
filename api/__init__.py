"""What the two HTTP services share: the Post service (``post/``, writes) and the query
service (``query/``, reads). The app skeleton, HTTP metrics and entry point (``common``),
problem details (``errors``), strict bodies and ids (``body``), bearer tokens (``auth``),
rate limits (``limits``, ``ratelimit``), the Kafka producer (``kafka``), and the servers
both depend on: their timeouts, health checks and 503s (``dependencies``).
"""
