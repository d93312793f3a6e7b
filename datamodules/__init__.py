"""Datamodules by kind: :mod:`.detection`, :mod:`.events`, :mod:`.classification` and :mod:`.sequences`; the
loaders they share in :mod:`.common`."""
