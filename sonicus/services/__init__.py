"""Business rules and the commit boundary, shared by views, CLI commands and jobs."""
