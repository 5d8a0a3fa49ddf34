-- PostgreSQL: accounts (owned by the Post service) and the ACID projection of the log.
-- Applied idempotently by `python -m ops.services up` (and `ops.schema`).
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
-- (api/follow_cap.py, policies/following.py). Swept by the Post service after a day.
CREATE TABLE IF NOT EXISTS follow_intents (
  follower_id bigint NOT NULL,
  followee_id bigint NOT NULL,
  following   boolean NOT NULL,
  accepted_at timestamptz NOT NULL,
  PRIMARY KEY (follower_id, followee_id)
);
CREATE INDEX IF NOT EXISTS follow_intents_accepted_at ON follow_intents (accepted_at);
