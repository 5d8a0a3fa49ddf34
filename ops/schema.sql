-- PostgreSQL: accounts (owned by the Post service) and the ACID projection of the log.
-- Applied idempotently by `python -m localenv up` (and `ops.schema`).
CREATE TABLE IF NOT EXISTS users (
  user_id     bigint PRIMARY KEY,
  handle      text NOT NULL,
  token_hash  bytea NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS users_handle_lower ON users (lower(handle));
CREATE UNIQUE INDEX IF NOT EXISTS users_token_hash ON users (token_hash);

-- Tweets, range-partitioned on the Snowflake id (its top bits are milliseconds since the epoch).
CREATE TABLE IF NOT EXISTS tweets (
  tweet_id    bigint NOT NULL,
  author_id   bigint NOT NULL,
  text        text NOT NULL,
  created_at  timestamptz NOT NULL,
  deleted_at  timestamptz,
  PRIMARY KEY (tweet_id)
) PARTITION BY RANGE (tweet_id);
CREATE TABLE IF NOT EXISTS tweets_default PARTITION OF tweets DEFAULT;

-- Monthly partitions, 2023-01 .. 2028-12. A Snowflake id starts with the milliseconds
-- since the Twitter epoch (1288834974657), shifted left by 22 bits, so a month is a
-- contiguous id range. A month whose rows already sit in the default partition is
-- left there (PostgreSQL refuses to carve a partition out of a non-empty range).
DO $$
DECLARE
  month date;
  lo bigint;
  hi bigint;
  name text;
BEGIN
  FOR month IN SELECT generate_series('2023-01-01'::date, '2028-12-01'::date, interval '1 month')::date LOOP
    name := 'tweets_' || to_char(month, 'YYYY_MM');
    lo := ((extract(epoch FROM month)::bigint * 1000) - 1288834974657) << 22;
    hi := ((extract(epoch FROM (month + interval '1 month'))::bigint * 1000) - 1288834974657) << 22;
    IF to_regclass(name) IS NULL
       AND NOT EXISTS (SELECT 1 FROM tweets_default WHERE tweet_id >= lo AND tweet_id < hi) THEN
      EXECUTE format('CREATE TABLE %I PARTITION OF tweets FOR VALUES FROM (%s) TO (%s)', name, lo, hi);
    END IF;
  END LOOP;
END $$;
CREATE INDEX IF NOT EXISTS tweets_author_id_tweet_id ON tweets (author_id, tweet_id DESC);

-- A tweet_deleted that came before any post of its id, kept per (tweet, author): only that
-- author's post of the id picks it up (agents/projection.py), so a delete by anyone else
-- never hides a tweet. One row per early delete; rare.
CREATE TABLE IF NOT EXISTS tweet_early_deletes (
  tweet_id    bigint NOT NULL,
  author_id   bigint NOT NULL,
  deleted_at  timestamptz NOT NULL,
  PRIMARY KEY (tweet_id, author_id)
);

CREATE TABLE IF NOT EXISTS follows (
  follower_id bigint NOT NULL,
  followee_id bigint NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (follower_id, followee_id)
);
CREATE INDEX IF NOT EXISTS follows_followee ON follows (followee_id, follower_id);

-- The Post service's record of the follows and unfollows it accepted (the last decision per
-- pair): the following cap (TL_MAX_FOLLOWING) counts the follows projection overridden by
-- the intents of the last day, so a follow counts at once, before the projection has it
-- (post/follow_cap.py, policies/following.py). Swept by the Post service after a day.
CREATE TABLE IF NOT EXISTS follow_intents (
  follower_id bigint NOT NULL,
  followee_id bigint NOT NULL,
  following   boolean NOT NULL,
  accepted_at timestamptz NOT NULL,
  PRIMARY KEY (follower_id, followee_id)
);
CREATE INDEX IF NOT EXISTS follow_intents_accepted_at ON follow_intents (accepted_at);

-- Snowflake worker ids, leased by Post service processes (post/worker_id.py,
-- post/leases.py, policies/worker_lease.py). One row per worker id 0..1023; a process takes the lowest row
-- whose expires_at has passed (UPDATE ... FOR UPDATE SKIP LOCKED), renews it every
-- TTL/3 while holder and epoch are still its own, and stops issuing ids TTL/6 before
-- expires_at. Times are PostgreSQL's clock, whole milliseconds. epoch counts the times the
-- id changed hands (the fencing generation); issue_after is the previous holder's final
-- expires_at: ids of this generation have timestamps after it and before expires_at.
CREATE TABLE IF NOT EXISTS snowflake_worker_leases (
  worker_id    integer PRIMARY KEY CHECK (worker_id BETWEEN 0 AND 1023),
  holder       text NOT NULL DEFAULT '',
  epoch        bigint NOT NULL DEFAULT 0,
  issue_after  timestamptz NOT NULL DEFAULT 'epoch',
  expires_at   timestamptz NOT NULL DEFAULT 'epoch',
  taken_at     timestamptz,
  renewed_at   timestamptz
);
INSERT INTO snowflake_worker_leases (worker_id)
  SELECT n FROM generate_series(0, 1023) AS n
  ON CONFLICT (worker_id) DO NOTHING;

-- Idempotency-Key records of POST /v1/tweets (post/idempotency.py), 24 h each, keyed by
-- the user and sha256 of the client's key. A request holds the key while locked_until is
-- in the future (lock_token is its own); fingerprint (sha256 of the text), tweet_id,
-- created_at (epoch ms) and text are set before the event is produced, done once Kafka
-- acknowledged it. Rows past expires_at count as absent and are deleted in bounded
-- batches by every Post service.
CREATE TABLE IF NOT EXISTS idempotency_keys (
  user_id       bigint NOT NULL,
  key_hash      bytea NOT NULL,
  fingerprint   bytea,
  tweet_id      bigint,
  created_at    bigint,
  text          text,
  done          boolean NOT NULL DEFAULT false,
  expires_at    timestamptz NOT NULL,
  locked_until  timestamptz,
  lock_token    bytea,
  PRIMARY KEY (user_id, key_hash)
);
CREATE INDEX IF NOT EXISTS idempotency_keys_expires_at ON idempotency_keys (expires_at);

-- Read markers (query/markers.py, policies/markers.py): the newest tweet id a user has read
-- on a timeline, shared by their devices (Mastodon's markers). version counts the applied
-- writes; a write without the current version only moves last_read_id forward.
CREATE TABLE IF NOT EXISTS timeline_markers (
  user_id       bigint NOT NULL,
  timeline      text NOT NULL,
  last_read_id  bigint NOT NULL,
  version       bigint NOT NULL,
  updated_at    timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (user_id, timeline)
);
