-- get_version: the PgBouncer version string (PgBouncer 1.18.0); accepted only by the admin console.
SHOW VERSION
