"""Background jobs: queue names, the enqueue helper, job functions and the schedule."""
