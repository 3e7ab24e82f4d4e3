-- get_role_secrets: the password verifiers (SCRAM secrets or md5 hashes; NULL: no password) of the named roles, for PgBouncer's auth file; needs a superuser (pg_authid).
select rolname as name, rolpassword as secret
from pg_authid
where rolname = any(%(names)s)
