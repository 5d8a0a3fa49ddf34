"""The read side: home and author timelines read from the projections, and the query service.

``query.reader.HomeTimelineReader`` reads pages (the service, ``ops/verify.py``,
``localenv/demo.py``, the benchmarks and the tests use it); ``query.service.create_app(settings)``
builds the query service; run it with ``python -m query.service``.
"""
