"""HTTP services: the Post service (writes: accounts, tweets, follows), and the HTTP parts the
query service (``query/``) shares with it: app building, errors, authentication, limits, Kafka.

``api.post_service.create_app(settings)`` builds the Post service; run it with
``python -m api.post_service``.
"""
