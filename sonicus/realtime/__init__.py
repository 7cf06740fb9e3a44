"""Live updates: ``publish`` (low level, any process), the broker (one subscriber per web
process, the per-user socket registry) and the ``/ws`` routes."""
