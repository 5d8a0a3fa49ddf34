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
CREATE INDEX IF NOT EXISTS tweets_author_id_tweet_id ON tweets (author_id, tweet_id DESC);

CREATE TABLE IF NOT EXISTS follows (
  follower_id bigint NOT NULL,
  followee_id bigint NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (follower_id, followee_id)
);
CREATE INDEX IF NOT EXISTS follows_followee ON follows (followee_id, follower_id);
