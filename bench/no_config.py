"""An empty gunicorn config: benches set every option on the command line."""
