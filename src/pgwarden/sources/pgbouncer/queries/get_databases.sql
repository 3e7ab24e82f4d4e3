-- get_databases: one row per configured database: pool_size, reserve_pool, max_connections (max_db_connections), current_connections.
SHOW DATABASES
