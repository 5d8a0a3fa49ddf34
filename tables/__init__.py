"""Faust tables (RocksDB stores, changelogged to Kafka) of the two stages."""
