"""Training engine: one loop (``loop``), the papers' losses (``losses``), tasks, runner."""
