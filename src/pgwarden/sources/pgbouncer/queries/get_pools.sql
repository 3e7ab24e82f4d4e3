-- get_pools: one row per (database, user) pool: client and server connections by state, the oldest wait, the pool mode.
SHOW POOLS
