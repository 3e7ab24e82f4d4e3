"""A Django app that instruments the psycopg_pool pools Django 5.1+ creates for
``DATABASES[...]["OPTIONS"]["pool"]``. Add ``"django_pgwarden"`` (or this module's path) to
``INSTALLED_APPS``."""
