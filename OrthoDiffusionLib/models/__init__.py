"""Models: the catalogue (shipped and per-user entries), safe installs, loading backbones and head
sets, import of the published checkpoints, head versions and rollback."""
