"""Scans in, labelled arrays out: folder layouts, scan readers and decoding, head framing, the decoded-image
cache, partitions into sites, duplicate detection and the leak check, emulated scanner shift, the
coordinator's test set and each site's split."""
