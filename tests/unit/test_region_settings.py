"""A region's settings: a secondary region must know where its writes go."""
from __future__ import annotations

import pytest

from settings import Settings


def test_a_secondary_region_needs_the_primary_post_url() -> None:
    with pytest.raises(ValueError, match="TL_PRIMARY_POST_URL"):
        Settings(region_role="secondary")
    with pytest.raises(ValueError, match="TL_PRIMARY_POST_URL"):
        Settings(region_role="secondary", primary_post_url="127.0.1.1:8081")
    with pytest.raises(ValueError, match="TL_REGION_ROLE"):
        Settings(region_role="replica")
    ok = Settings(region="b", region_role="secondary", primary_post_url="http://127.0.1.1:8081")
    assert ok.secondary_region and not Settings().secondary_region


def test_writes_go_to_the_primary_postgres_when_one_is_named() -> None:
    local = "postgresql://timeline:timeline@127.0.2.1:5432/timeline"
    assert Settings(postgres_dsn=local).postgres_write_dsn == local
    primary = "postgresql://timeline:timeline@127.0.1.1:5432/timeline"
    assert Settings(postgres_dsn=local, postgres_primary_dsn=primary).postgres_write_dsn == primary
