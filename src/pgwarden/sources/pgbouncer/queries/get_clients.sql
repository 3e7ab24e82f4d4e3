-- get_clients: one row per client connection (state, address, application_name, the server it is linked to).
SHOW CLIENTS
