"""The engine: DeepSpeed set-up, schedules, the train loop, checkpoint/resume and logging.

A package rather than DESIGN.md's single ``engine.py``: each concern is one small file.
"""
