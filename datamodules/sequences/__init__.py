"""Sequence tasks: the Add task (:mod:`.add_task`)."""
