"""The local environment: the four servers on this machine, and what runs against them.

``python -m localenv up|status|down|reset`` (``./dev services ...``) starts and stops real
Kafka, Cassandra, Redis and PostgreSQL servers (``services``: ``up``, ``ensure_up``; one
module per server on the ``service`` base, ``host`` for packages, jars and processes);
``server_set.ServerSet`` is a private set of the four on ports of their own (the fault
suite's). ``worker.Worker`` runs a Faust worker as a child process, ``workload`` generates
and publishes a seeded workload, and ``python -m localenv.demo`` (``./dev demo``) runs the
pipeline end to end.
"""
