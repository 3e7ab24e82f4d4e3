-- get_servers: one row per server connection (state, remote_pid = the PostgreSQL backend pid, the client it is linked to).
SHOW SERVERS
