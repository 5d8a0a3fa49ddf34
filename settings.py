"""One typed, frozen settings object, read from the environment in one place.

Every tunable of the service is declared here with the environment variable it
comes from. Defaults point at the local servers started by ``python -m localenv up``.
Code receives a ``Settings`` instance (``get_settings()``) instead of reading the
environment itself.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable


def _env(name: str, default: Any, cast: Callable[[str], Any] = str, *, secret: bool = False) -> Any:
    return field(default=default, metadata={"env": name, "cast": cast}, repr=not secret)


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a boolean: {raw!r}")


def _tuple(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


KAFKA_SECURITY_PROTOCOLS = ("PLAINTEXT", "SASL_PLAINTEXT")
KAFKA_SASL_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")
# Consistency levels a read or write may use (the driver's names).
CASSANDRA_CONSISTENCIES = ("ONE", "TWO", "THREE", "QUORUM", "ALL", "LOCAL_QUORUM", "EACH_QUORUM", "LOCAL_ONE")
CASSANDRA_MEMTABLES = ("trie", "skiplist")

# A region either takes writes (the primary) or forwards them to the primary (a secondary).
REGION_ROLES = ("primary", "secondary")

# The per-client rate limits: each has ``<name>_rate_burst`` and ``<name>_rate_per_s``.
RATE_LIMITS = ("post", "read", "signup", "follow", "token_lookup")


def unthrottled() -> dict[str, Any]:
    """Overrides that lift every per-client rate limit: for load generators (benchmarks, the
    fault suite) that drive many users from one address."""
    out: dict[str, Any] = {}
    for name in RATE_LIMITS:
        out[f"{name}_rate_burst"] = 10**9
        out[f"{name}_rate_per_s"] = 1e9
    return out


@dataclass(frozen=True)
class Settings:
    # --- servers -----------------------------------------------------------
    kafka_bootstrap: str = _env("TL_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    # How every Kafka client of the service authenticates (``kafka_kwargs``; the worker through
    # Faust's broker credentials): PLAINTEXT (the single broker), or SASL_PLAINTEXT with a SCRAM
    # principal of its own per process kind (the cluster topology, localenv/kafka_cluster.py).
    kafka_security_protocol: str = _env("TL_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
    kafka_sasl_mechanism: str = _env("TL_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    kafka_username: str = _env("TL_KAFKA_USERNAME", "")
    kafka_password: str = _env("TL_KAFKA_PASSWORD", "", secret=True)
    # An event a producer put on the wrong partition (another partitioner than Kafka's):
    # "reroute" re-sends it to its key's partition of the same topic; "dead-letter" refuses it
    # with the reason (a worker whose principal may not write the source topics: the cluster's ACLs).
    misplaced_events: str = _env("TL_MISPLACED_EVENTS", "reroute")
    cassandra_hosts: tuple[str, ...] = _env("TL_CASSANDRA_HOSTS", ("127.0.0.1",), _tuple)
    cassandra_port: int = _env("TL_CASSANDRA_PORT", 9042, int)
    cassandra_keyspace: str = _env("TL_CASSANDRA_KEYSPACE", "timeline")
    # How the local Cassandra (localenv) syncs its commit log: "periodic" every
    # TL_CASSANDRA_COMMITLOG_PERIOD_MS (50; Cassandra's default is 10 s) and acknowledges
    # writes before that, so the worker's acks wait for the sync (TL_CASSANDRA_COMMITLOG_GATE);
    # "batch" fsyncs before every acknowledgement (half the rows per CPU-second here);
    # "group" at most once per window (ms), each write waiting up to a window.
    # docs/operations.md, "Durability of the local Cassandra".
    cassandra_commitlog_sync: str = _env("TL_CASSANDRA_COMMITLOG_SYNC", "periodic")
    cassandra_commitlog_group_window_ms: int = _env("TL_CASSANDRA_COMMITLOG_GROUP_WINDOW_MS", 10, int)
    cassandra_commitlog_period_ms: int = _env("TL_CASSANDRA_COMMITLOG_PERIOD_MS", 50, int)
    # With "periodic" on a node that holds the only copy of a row, the worker acks a batch
    # (its Kafka offsets may be committed) only once the commit log holds its writes on disk
    # (sinks/cassandra_sync.py). "off" skips that wait: for measurements only, it loses
    # acknowledged writes when Cassandra crashes.
    cassandra_commitlog_gate: str = _env("TL_CASSANDRA_COMMITLOG_GATE", "auto")
    # The local node's mutation threads (concurrent_writes). With an fsync before every
    # acknowledgement a thread waits for the disk with its mutation: the number of threads
    # bounds how many mutations one fsync can cover (was 8; with 64 threads and 32 batches in
    # flight the node took ~1.4x the rows per CPU-second: docs/operations.md).
    cassandra_concurrent_writes: int = _env("TL_CASSANDRA_CONCURRENT_WRITES", 64, int)
    # The local node's memtable implementation: "trie" (Cassandra 5.0's; with it the node spent
    # less of its CPU on mutations and compaction here) or "skiplist" (the older default).
    # docs/operations.md.
    cassandra_memtable: str = _env("TL_CASSANDRA_MEMTABLE", "trie")
    # Timer slack (prctl PR_SET_TIMERSLACK, microseconds) of the servers ``./dev services``
    # starts (localenv/host.spawn; systemd's TimerSlackNSec= does the same for a unit): how late
    # the kernel may end a thread's timed sleep to fold it into another wake-up. Cassandra's
    # request threads spin between requests in sleeps of 10 us and up, each a timer in this VM;
    # with 500 us instead of Linux's 50 the node took half the CPU for the same writes arriving
    # every 80 ms (0.17 against 0.36 of a core, the writes' latency the same; docs/operations.md,
    # "Timer slack of the local servers"). 0 leaves the kernel's default.
    server_timer_slack_us: int = _env("TL_SERVER_TIMER_SLACK_US", 500, int)
    # The nice value of the session (Linux autogroup) of the worker, its supervisor and the HTTP
    # services when they lead their own session (cpu_priority.py): on a machine they share with
    # the servers, Linux shares the CPUs between sessions, so this is what lets their threads
    # run when they are woken instead of queueing behind the servers' (docs/operations.md). 0
    # leaves the default; a negative value needs CAP_SYS_NICE (without it: a log line, no change).
    session_nice: int = _env("TL_SESSION_NICE", -10, int)
    # The same for the HTTP services (post and query), above the worker's by default: a read or
    # a live stream's burst of events waits for a CPU behind the worker's batches otherwise (at
    # the live benchmark's 50% load the query service waited ~70 ms per second at -10, ~35 at
    # -15, and the stream events' p99 went from 52-72 ms to 43-55 ms: docs/clients.md). Its CPU
    # is small next to the worker's (0.2 of a core against 0.8 there), so the worker loses little.
    http_session_nice: int = _env("TL_HTTP_SESSION_NICE", -15, int)
    # UNLOGGED batches each client keeps in flight per bulk write (sinks/cassandra.py).
    cassandra_batches_in_flight: int = _env("TL_CASSANDRA_BATCHES_IN_FLIGHT", 32, int)
    # Replication of the keyspace ops/schema.py creates: without a local DC, SimpleStrategy
    # (the single node); with one, NetworkTopologyStrategy {dc: factor} (the three-node ring
    # of localenv/cassandra_ring.py: dc1, 3). Every client routes token-aware over the
    # local DC's nodes (empty: the DC of the contact point) and reads and writes at
    # TL_CASSANDRA_CONSISTENCY (no lightweight transactions: tweet ids are claimed in
    # PostgreSQL, sinks/postgres.py).
    cassandra_replication_factor: int = _env("TL_CASSANDRA_REPLICATION_FACTOR", 1, int)
    cassandra_local_dc: str = _env("TL_CASSANDRA_LOCAL_DC", "")
    # Replicas per data center, "dc1:1,dc2:1" (policies/dc_replication.py): when set, the keyspace
    # is NetworkTopologyStrategy with these factors (one cluster across regions); empty: as above.
    cassandra_replication: str = _env("TL_CASSANDRA_REPLICATION", "")
    cassandra_consistency: str = _env("TL_CASSANDRA_CONSISTENCY", "LOCAL_QUORUM")
    redis_url: str = _env("TL_REDIS_URL", "redis://127.0.0.1:6379/0")
    # A Redis Cluster instead of one server: every client is a redis-py RedisCluster
    # (sinks/redis_client.py), TL_REDIS_URL may list several nodes ("redis://h:p1,h:p2"),
    # and every worker write waits until TL_REDIS_WAIT_REPLICAS replicas of its master hold
    # it (WAIT, at most TL_REDIS_WAIT_MS; fewer: the batch is retried). docs/reliability.md.
    redis_cluster: bool = _env("TL_REDIS_CLUSTER", False, _bool)
    redis_wait_replicas: int = _env("TL_REDIS_WAIT_REPLICAS", 1, int)
    redis_wait_ms: int = _env("TL_REDIS_WAIT_MS", 1000, int)
    # How long the worker waits for one Redis reply before it gives the call up (a transient
    # error: the batch retries on a new connection), for a paused server or a link that drops
    # packets; set here rather than left to redis-py's default (5 s in 8.x, none before).
    # Above TL_REDIS_WAIT_MS (a WAIT is one call).
    redis_timeout_s: float = _env("TL_REDIS_TIMEOUT_S", 5.0, float)
    # Prefix of every Redis key the service owns (lets tests and tenants share a server).
    redis_prefix: str = _env("TL_REDIS_PREFIX", "tl:")
    postgres_dsn: str = _env(
        "TL_POSTGRES_DSN", "postgresql://timeline:timeline@127.0.0.1:5432/timeline"
    )
    # Schema of the tables (accounts and the log's projection): one per namespace.
    postgres_schema: str = _env("TL_POSTGRES_SCHEMA", "public")
    # How long the worker waits for one PostgreSQL call (a batch's claim, a projection batch)
    # before it gives the call up as a transient error and retries on a new connection: a
    # server that stopped answering (paused, or a link that drops packets without a reset)
    # would otherwise hold the stage forever, and the health check would not hear of it.
    postgres_timeout_s: float = _env("TL_POSTGRES_TIMEOUT_S", 10.0, float)

    # --- regions (docs/operations.md "Two regions") --------------------------
    # The region this process runs in ("" = the only one) and its role. A secondary region
    # reads its own stores (its Redis, its Cassandra data center, a PostgreSQL replica) and
    # fans out from a mirror of the primary's log, but takes no writes of its own: its worker
    # does not project into PostgreSQL (the replica is read-only; the primary's worker does
    # it), its Post service forwards every request to TL_PRIMARY_POST_URL, its query service
    # writes markers through TL_POSTGRES_PRIMARY_DSN and sends user_active events to the
    # primary's Kafka (its TL_KAFKA_BOOTSTRAP), so both regions' workers read the same log.
    region: str = _env("TL_REGION", "")
    region_role: str = _env("TL_REGION_ROLE", "primary")
    primary_post_url: str = _env("TL_PRIMARY_POST_URL", "")
    postgres_primary_dsn: str = _env("TL_POSTGRES_PRIMARY_DSN", "")

    # --- topics ------------------------------------------------------------
    topic_tweets: str = _env("TL_TOPIC_TWEETS", "tweets")
    topic_follows: str = _env("TL_TOPIC_FOLLOWS", "follows")
    topic_activity: str = _env("TL_TOPIC_ACTIVITY", "user-activity")
    topic_deliveries: str = _env("TL_TOPIC_DELIVERIES", "timeline-deliveries")
    topic_dead_letters: str = _env("TL_TOPIC_DEAD_LETTERS", "dead-letters")
    topic_partitions: int = _env("TL_TOPIC_PARTITIONS", 64, int)
    topic_replication: int = _env("TL_TOPIC_REPLICATION", 1, int)

    # --- faust -------------------------------------------------------------
    app_id: str = _env("TL_APP_ID", "home-timeline")
    faust_store: str = _env("TL_FAUST_STORE", "rocksdb://")
    faust_datadir: str = _env("TL_FAUST_DATADIR", ".state/faust")
    faust_web_port: int = _env("TL_FAUST_WEB_PORT", 6066, int)
    # How long the group waits for a silent worker before moving its partitions (heartbeats
    # every second, from the consumer's own thread). A supervisor that sees a worker die
    # hands its partitions over at once (ops/supervise.py); this is the backstop when no one
    # sees it (a lost machine). Kafka's group.min.session.timeout.ms is 6 s.
    broker_session_timeout_s: float = _env("TL_BROKER_SESSION_TIMEOUT_S", 10.0, float)
    # A stable name per worker process (its host, pod or slot), unique in the group: its
    # Kafka client id, so a supervisor can find (and remove) its member when it dies.
    worker_name: str = _env("TL_WORKER_NAME", "")
    # Kafka static membership (KIP-345) with the worker's name as group.instance.id: a
    # worker restarted within the session timeout gets its partitions back without a
    # rebalance.
    worker_static_membership: bool = _env("TL_WORKER_STATIC_MEMBERSHIP", False, _bool)
    # Which processes run which stages (policies/worker_layout.py): "one" (a worker runs both
    # stages and the projection) or "split" (a worker runs TL_WORKER_ROLE: "fanout" or
    # "deliver", each its own Faust app and consumer group). Every process of a deployment
    # (workers and ops tools) needs the same layout.
    worker_layout: str = _env("TL_WORKER_LAYOUT", "one")
    worker_role: str = _env("TL_WORKER_ROLE", "")
    # After SIGTERM/SIGINT a worker has this long to stop, then exits hard (agents/shutdown.py).
    shutdown_grace_s: float = _env("TL_SHUTDOWN_GRACE_S", 8.0, float)
    # The PostgreSQL projection is off the timeline path: it starts a batch at most this often
    # unless a full batch is waiting (agents/take.pace_pause), so under light load it writes a
    # few larger batches instead of one per event (each costs a Cassandra read and a transaction).
    projection_pace_ms: int = _env("TL_PROJECTION_PACE_MS", 250, int)
    # The same for the timeline stages (stage 1, stage 2): 0, none, by default (a batch as soon
    # as an event is buffered); a pace trades up to that much latency for fewer, larger batches.
    fanout_pace_ms: int = _env("TL_FANOUT_PACE_MS", 0, int)
    deliver_pace_ms: int = _env("TL_DELIVER_PACE_MS", 0, int)
    # Stage 1's Kafka fetches wait up to this long to gather records while more than
    # TL_FETCH_GATHER_ABOVE records/s arrive (policies/fetch_gather.py); under that, and with
    # 0 ms, a fetch returns at the first record. Its process's consumer only (the process that
    # runs stage 1: role fanout, or the one layout's single process).
    fetch_gather_ms: int = _env("TL_FETCH_GATHER_MS", 100, int)
    fetch_gather_above: float = _env("TL_FETCH_GATHER_ABOVE", 50.0, float)
    # Stage 2 writes a batch in chunks of users of at most this many rows (Cassandra, then
    # metadata, then Redis and live notices, per chunk; policies/chunks.py), this many chunks
    # in flight: timelines change progressively and one chunk's Redis work overlaps another's
    # Cassandra writes.
    deliver_chunk_rows: int = _env("TL_DELIVER_CHUNK_ROWS", 1024, int)
    deliver_chunks_in_flight: int = _env("TL_DELIVER_CHUNKS_IN_FLIGHT", 3, int)
    # Batches whose chunks may still be written while stage 2 walks the next one (0, the
    # default: a batch is written to the end before the next is taken; docs/operations.md
    # says why it is off). A batch's chunks start after the previous batch's are written;
    # its acks wait for them (agents/take.py).
    deliver_overlap: int = _env("TL_DELIVER_OVERLAP", 0, int)

    # --- policies (the design document's numbers) ---------------------------
    celebrity_threshold: int = _env("TL_CELEBRITY_THRESHOLD", 10_000, int)
    # An author stops being a celebrity only below threshold - hysteresis.
    celebrity_hysteresis: int = _env("TL_CELEBRITY_HYSTERESIS", 1_000, int)
    inactive_after_ms: int = _env("TL_INACTIVE_AFTER_MS", 30 * 24 * 3600 * 1000, int)
    timeline_cap: int = _env("TL_TIMELINE_CAP", 800, int)
    timeline_ttl_s: int = _env("TL_TIMELINE_TTL_S", 3600, int)
    # Newest tweet ids per author cached for pulls (celebrities' tweets merged at read time):
    # a first page asks each pulled author for at most a page and a little (policies/timeline.py).
    author_window_cap: int = _env("TL_AUTHOR_WINDOW_CAP", 100, int)
    backfill_limit: int = _env("TL_BACKFILL_LIMIT", 800, int)
    tweet_max_chars: int = _env("TL_TWEET_MAX_CHARS", 280, int)

    # --- the event contract and what the worker produces (schemas/, agents/) ---
    # Largest event value accepted on a source topic, bytes; larger ones are dead-lettered.
    event_max_bytes: int = _env("TL_EVENT_MAX_BYTES", 64 * 1024, int)
    # How deep a producer's extra fields may nest objects and arrays.
    event_max_depth: int = _env("TL_EVENT_MAX_DEPTH", 8, int)
    # Largest delivery message stage 1 publishes, bytes (a batch is split to fit): well
    # under the producer's max request (1 MiB) and the broker's message.max.bytes.
    delivery_max_bytes: int = _env("TL_DELIVERY_MAX_BYTES", 256 * 1024, int)
    # This many events in a row failing with the same unexpected error is a systemic
    # fault (a bug or a broken store), not bad input: the worker stops instead of
    # dead-lettering the stream.
    systemic_error_streak: int = _env("TL_SYSTEMIC_ERROR_STREAK", 20, int)

    # --- HTTP services -------------------------------------------------------
    # Token bucket per user: a burst allowance, refilled at a sustained rate.
    post_rate_burst: int = _env("TL_POST_RATE_BURST", 50, int)
    post_rate_per_s: float = _env("TL_POST_RATE_PER_S", 0.5, float)
    # Reads (query service), per reader: home timelines per user, author timelines per
    # user or, without a token, per client address.
    read_rate_burst: int = _env("TL_READ_RATE_BURST", 300, int)
    read_rate_per_s: float = _env("TL_READ_RATE_PER_S", 5.0, float)
    # Sign-ups per client address (there is no user yet): each one is a PostgreSQL insert and
    # an event. 20 at once, then one every 20 s (180 an hour).
    signup_rate_burst: int = _env("TL_SIGNUP_RATE_BURST", 20, int)
    signup_rate_per_s: float = _env("TL_SIGNUP_RATE_PER_S", 0.05, float)
    # Follows and unfollows together, per user: each one can copy up to TL_BACKFILL_LIMIT
    # tweets into (or out of) a timeline. 100 at once, then one every 5 s (720 an hour).
    follow_rate_burst: int = _env("TL_FOLLOW_RATE_BURST", 100, int)
    follow_rate_per_s: float = _env("TL_FOLLOW_RATE_PER_S", 0.2, float)
    # Most accounts one user may follow; a follow past it is 409 (unfollows always work).
    max_following: int = _env("TL_MAX_FOLLOWING", 5_000, int)
    # Bearer tokens looked up in PostgreSQL per client address, in both services: checked
    # before the lookup, so garbage tokens cannot make PostgreSQL look up tokens at any
    # rate. Tokens found in (or known to be missing from) the in-process caches cost
    # nothing. Over it: 429 with Retry-After.
    token_lookup_rate_burst: int = _env("TL_TOKEN_LOOKUP_RATE_BURST", 200, int)
    token_lookup_rate_per_s: float = _env("TL_TOKEN_LOOKUP_RATE_PER_S", 20.0, float)
    # In-process token caches, per service process: a valid token is remembered this long (a
    # token removed from PostgreSQL keeps working at most this long), an unknown one too (a
    # token added to PostgreSQL after a request was refused with it works at most this late).
    token_cache_ttl_s: float = _env("TL_TOKEN_CACHE_TTL_S", 60.0, float)
    token_negative_ttl_s: float = _env("TL_TOKEN_NEGATIVE_TTL_S", 60.0, float)
    # Reverse proxies whose X-Forwarded-For is believed (addresses or CIDR networks, comma
    # separated). Empty: the client is the TCP peer, so behind a proxy that is not listed
    # every client shares the proxy's per-address limits.
    trusted_proxies: tuple[str, ...] = _env("TL_TRUSTED_PROXIES", (), _tuple)
    snowflake_worker_id: int = _env("TL_SNOWFLAKE_WORKER_ID", -1, int)
    # Leased worker ids (PostgreSQL, post/worker_id.py): a lease lasts this long, is renewed
    # every third of it, and its holder stops issuing ids a sixth of it before it ends.
    snowflake_lease_ttl_s: float = _env("TL_SNOWFLAKE_LEASE_TTL_S", 60.0, float)
    snowflake_epoch_ms: int = _env("TL_SNOWFLAKE_EPOCH_MS", 1288834974657, int)
    # Cap on request bodies, bytes.
    max_body_bytes: int = _env("TL_MAX_BODY_BYTES", 16 * 1024, int)
    debug: bool = _env("TL_DEBUG", False, _bool)

    def __post_init__(self) -> None:
        if not 0 <= self.celebrity_hysteresis < self.celebrity_threshold:
            raise ValueError("TL_CELEBRITY_HYSTERESIS must be in [0, TL_CELEBRITY_THRESHOLD)")
        if self.backfill_limit > self.timeline_cap:
            raise ValueError("TL_BACKFILL_LIMIT must not exceed TL_TIMELINE_CAP")
        if not self.postgres_schema.replace("_", "").isalnum():
            raise ValueError("TL_POSTGRES_SCHEMA must be letters, digits and underscores")
        if self.region_role not in REGION_ROLES:
            raise ValueError(f"TL_REGION_ROLE must be one of {', '.join(REGION_ROLES)}")
        if self.region_role == "secondary" and not self.primary_post_url.startswith(("http://", "https://")):
            raise ValueError("TL_REGION_ROLE=secondary needs TL_PRIMARY_POST_URL (http(s)://host:port of the "
                             "primary region's Post service): a secondary region forwards writes there")
        if self.snowflake_lease_ttl_s < 1:
            raise ValueError("TL_SNOWFLAKE_LEASE_TTL_S must be >= 1")
        from policies.worker_layout import check as check_layout

        if (problem := check_layout(self.worker_layout, self.worker_role)) is not None:
            raise ValueError(problem)
        if self.worker_static_membership and not self.worker_name:
            raise ValueError("TL_WORKER_STATIC_MEMBERSHIP needs TL_WORKER_NAME (the group.instance.id)")
        if self.topic_partitions < 1:
            raise ValueError("TL_TOPIC_PARTITIONS must be >= 1")
        if min(self.cassandra_concurrent_writes, self.cassandra_batches_in_flight,
               self.cassandra_commitlog_group_window_ms, self.cassandra_commitlog_period_ms) < 1:
            raise ValueError("TL_CASSANDRA_CONCURRENT_WRITES, TL_CASSANDRA_BATCHES_IN_FLIGHT, "
                             "TL_CASSANDRA_COMMITLOG_GROUP_WINDOW_MS and TL_CASSANDRA_COMMITLOG_PERIOD_MS must be >= 1")
        if self.server_timer_slack_us < 0:
            raise ValueError("TL_SERVER_TIMER_SLACK_US must be >= 0 (0: the kernel's default)")
        if self.cassandra_memtable not in CASSANDRA_MEMTABLES:
            raise ValueError(f"TL_CASSANDRA_MEMTABLE must be one of {', '.join(CASSANDRA_MEMTABLES)}, "
                             f"got {self.cassandra_memtable!r}")
        if self.cassandra_commitlog_gate not in ("auto", "off"):
            raise ValueError(f"TL_CASSANDRA_COMMITLOG_GATE must be auto or off, got {self.cassandra_commitlog_gate!r}")
        if self.author_window_cap < 1:
            raise ValueError("TL_AUTHOR_WINDOW_CAP must be >= 1")
        if self.redis_timeout_s * 1000 <= self.redis_wait_ms:
            raise ValueError("TL_REDIS_TIMEOUT_S must be longer than TL_REDIS_WAIT_MS (a WAIT is one call)")
        if self.postgres_timeout_s <= 0:
            raise ValueError("TL_POSTGRES_TIMEOUT_S must be > 0")
        if min(self.deliver_chunk_rows, self.deliver_chunks_in_flight) < 1:
            raise ValueError("TL_DELIVER_CHUNK_ROWS and TL_DELIVER_CHUNKS_IN_FLIGHT must be >= 1")
        if self.deliver_overlap < 0:
            raise ValueError("TL_DELIVER_OVERLAP must be >= 0")
        if not 0 <= self.fetch_gather_ms <= 500 or self.fetch_gather_above <= 0:
            raise ValueError("TL_FETCH_GATHER_MS must be in 0..500 and TL_FETCH_GATHER_ABOVE > 0")
        if min(self.projection_pace_ms, self.fanout_pace_ms, self.deliver_pace_ms) < 0:
            raise ValueError("TL_PROJECTION_PACE_MS, TL_FANOUT_PACE_MS and TL_DELIVER_PACE_MS must be >= 0")
        if not 1024 <= self.event_max_bytes <= 512 * 1024:
            raise ValueError("TL_EVENT_MAX_BYTES must be in 1024..524288")
        if not 16 * 1024 <= self.delivery_max_bytes <= 900 * 1024:
            raise ValueError("TL_DELIVERY_MAX_BYTES must be in 16384..921600 (the producer's limit is 1 MiB)")
        for name in RATE_LIMITS:
            if not getattr(self, f"{name}_rate_burst") > 0 or not getattr(self, f"{name}_rate_per_s") > 0:
                raise ValueError(f"TL_{name.upper()}_RATE_BURST and TL_{name.upper()}_RATE_PER_S must be > 0")
        if self.max_following < 1:
            raise ValueError("TL_MAX_FOLLOWING must be >= 1")
        if not self.token_cache_ttl_s > 0 or not self.token_negative_ttl_s > 0:
            raise ValueError("TL_TOKEN_CACHE_TTL_S and TL_TOKEN_NEGATIVE_TTL_S must be > 0")
        from policies.client_address import parse_networks

        try:
            parse_networks(self.trusted_proxies)
        except ValueError as exc:
            raise ValueError(f"TL_TRUSTED_PROXIES: {exc}") from None
        if self.event_max_depth < 1 or self.systemic_error_streak < 1 or self.tweet_max_chars < 1:
            raise ValueError("TL_EVENT_MAX_DEPTH, TL_SYSTEMIC_ERROR_STREAK and TL_TWEET_MAX_CHARS must be >= 1")
        if self.redis_wait_replicas < 0 or self.redis_wait_ms < 1:
            raise ValueError("TL_REDIS_WAIT_REPLICAS must be >= 0 and TL_REDIS_WAIT_MS >= 1")
        if not self.shutdown_grace_s > 0:
            raise ValueError("TL_SHUTDOWN_GRACE_S must be > 0")
        if self.kafka_security_protocol not in KAFKA_SECURITY_PROTOCOLS:
            raise ValueError(f"TL_KAFKA_SECURITY_PROTOCOL must be one of {', '.join(KAFKA_SECURITY_PROTOCOLS)}")
        if self.kafka_security_protocol == "SASL_PLAINTEXT":
            if self.kafka_sasl_mechanism not in KAFKA_SASL_MECHANISMS:
                raise ValueError(f"TL_KAFKA_SASL_MECHANISM must be one of {', '.join(KAFKA_SASL_MECHANISMS)}")
            if not self.kafka_username or not self.kafka_password:
                raise ValueError("TL_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT needs TL_KAFKA_USERNAME and TL_KAFKA_PASSWORD")
        if self.topic_replication < 1:
            raise ValueError("TL_TOPIC_REPLICATION must be >= 1")
        if self.misplaced_events not in ("reroute", "dead-letter"):
            raise ValueError("TL_MISPLACED_EVENTS must be reroute or dead-letter")
        if self.cassandra_replication_factor < 1:
            raise ValueError("TL_CASSANDRA_REPLICATION_FACTOR must be >= 1")
        from policies.dc_replication import parse_dc_factors

        try:
            parse_dc_factors(self.cassandra_replication)
        except ValueError as exc:
            raise ValueError(f"TL_CASSANDRA_REPLICATION: {exc}") from None
        if self.cassandra_consistency not in CASSANDRA_CONSISTENCIES:
            raise ValueError(f"TL_CASSANDRA_CONSISTENCY must be one of {', '.join(CASSANDRA_CONSISTENCIES)}")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> "Settings":
        environ = dict(os.environ if environ is None else environ)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = f.metadata["env"]
            if name in environ:
                try:
                    values[f.name] = f.metadata["cast"](environ[name])
                except ValueError as exc:
                    raise ValueError(f"{name}={environ[name]!r}: {exc}") from None
        values.update(overrides)
        return cls(**values)

    @classmethod
    def env_vars(cls) -> dict[str, str]:
        """Field name -> environment variable name, for docs and tests."""
        return {f.name: f.metadata["env"] for f in dataclasses.fields(cls)}

    @property
    def secondary_region(self) -> bool:
        """A secondary region takes no writes of its own (see ``region_role``)."""
        return self.region_role == "secondary"

    @property
    def postgres_write_dsn(self) -> str:
        """Where this process writes PostgreSQL: the primary region's server."""
        return self.postgres_primary_dsn or self.postgres_dsn

    def postgres_kwargs(self) -> dict[str, Any]:
        """Connection options that select the schema (psycopg ``connect(dsn, **kwargs)``)."""
        return {"options": f"-c search_path={self.postgres_schema}"}

    def kafka_kwargs(self) -> dict[str, Any]:
        """Where and how a Kafka client connects: the keyword arguments every
        ``AIOKafkaProducer``/``AIOKafkaConsumer``/``AIOKafkaAdminClient`` of the service starts
        with (the bootstrap list and, with SASL, the principal's SCRAM credentials)."""
        kwargs: dict[str, Any] = {"bootstrap_servers": self.kafka_bootstrap,
                                  "security_protocol": self.kafka_security_protocol}
        if self.kafka_security_protocol == "SASL_PLAINTEXT":
            kwargs.update(sasl_mechanism=self.kafka_sasl_mechanism, sasl_plain_username=self.kafka_username,
                          sasl_plain_password=self.kafka_password)
        return kwargs

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)

    def with_topic_prefix(self, prefix: str, partitions: int) -> "Settings":
        """Scratch topics ``<prefix>tweets``, ``<prefix>follows``, ``<prefix>user-activity``,
        ``<prefix>timeline-deliveries``, ``<prefix>dead-letters`` with ``partitions`` each;
        the stores stay as they are."""
        return self.replace(
            topic_tweets=f"{prefix}tweets",
            topic_follows=f"{prefix}follows",
            topic_activity=f"{prefix}user-activity",
            topic_deliveries=f"{prefix}timeline-deliveries",
            topic_dead_letters=f"{prefix}dead-letters",
            topic_partitions=partitions,
        )

    def isolated(self, namespace: str, tag: str, workdir: str | os.PathLike[str], **overrides: Any) -> "Settings":
        """These settings moved into a world of their own on the same servers, for tests and
        benchmarks: topics ``<namespace>-<kind>-<tag>`` with 4 partitions, Cassandra keyspace
        and PostgreSQL schema ``<namespace>_<tag>`` (dashes as underscores), Redis prefix
        ``<namespace>:<tag>:``, Faust app id (the consumer group) ``<namespace>-<tag>`` and
        RocksDB folder ``<workdir>/faust``. ``overrides`` replace any of these or other fields.
        Creating the topics, keyspace and schema is the caller's business (``ops.schema``)."""
        ident = f"{namespace}_{tag}".replace("-", "_")
        values: dict[str, Any] = dict(
            topic_tweets=f"{namespace}-tweets-{tag}",
            topic_follows=f"{namespace}-follows-{tag}",
            topic_activity=f"{namespace}-activity-{tag}",
            topic_deliveries=f"{namespace}-deliveries-{tag}",
            topic_dead_letters=f"{namespace}-dead-{tag}",
            topic_partitions=4,
            cassandra_keyspace=ident,
            postgres_schema=ident,
            redis_prefix=f"{namespace}:{tag}:",
            app_id=f"{namespace}-{tag}",
            faust_datadir=os.path.join(os.fspath(workdir), "faust"),
        )
        values.update(overrides)
        return self.replace(**values)

    @property
    def worker_group(self) -> str:
        """This worker process's Faust app id and consumer group (policies/worker_layout.py);
        ValueError in the split layout without TL_WORKER_ROLE."""
        from policies.worker_layout import group_id, worker_role

        return group_id(self.app_id, worker_role(self.worker_layout, self.worker_role))

    def worker_groups(self) -> dict[str, tuple[str, ...]]:
        """Every consumer group of the layout -> the topics it consumes."""
        from policies.worker_layout import groups

        return groups(self.app_id, self.worker_layout, (self.topic_tweets, self.topic_follows),
                      (self.topic_activity, self.topic_deliveries))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings.from_env()
