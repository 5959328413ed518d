"""Server-side dynamic batching: `queue` (asyncio, timing, admission) and `collate` (pure tensor shaping)."""
