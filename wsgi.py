"""WSGI entry point: ``gunicorn wsgi:app`` or ``flask --app wsgi ...``."""

import gc

from sonicus import create_app

app = create_app()

# Everything loaded so far (modules, mappers, schemas, the app) lives as long as the process:
# keep it out of the collector's full passes, which otherwise rescan it under load.
gc.freeze()
