"""WSGI entry point: ``gunicorn wsgi:app`` or ``flask --app wsgi ...``."""

from sonicus import create_app

app = create_app()
