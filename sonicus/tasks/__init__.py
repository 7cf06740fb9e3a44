"""Background work: queue names and the enqueue helper (``queue``), the worker and the
periodic schedule. The jobs themselves are the services' own functions, enqueued by reference."""
