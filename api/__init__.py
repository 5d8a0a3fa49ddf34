"""HTTP services: the Post service (writes: accounts, tweets, follows) and the query side.

``api.post_service.create_app(settings)`` builds the Post service; run it with
``python -m api.post_service``.
"""
