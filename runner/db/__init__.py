"""Database layer: engine setup, typed models, migrations and the queue SQL."""
