"""Scheduling: cron expressions and their ticks (``cron``), schedules and the scheduler
side task of every worker (``schedule``), and how schedules and drift reports are shown
(``view``)."""
