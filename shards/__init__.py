"""Data for training by fitting: NYU crops and synthetic pose shards in webdataset tars.

Commands: ``python -m shards --help``. Training reads shards with :func:`shards.reader.make_loader`;
the shard format is documented in :mod:`shards.format`; frames and crops in the ground-floor :mod:`geometry`,
NYU's camera facts in :mod:`shards.nyu`.
"""
