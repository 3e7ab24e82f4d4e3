"""PgBouncer for pgwarden: what to write (``ini``), for which version (``version``), what each
driver needs behind it (``drivers``) and how to size it from a budget (``plan``)."""
