"""fleetrl beyond one machine: typed units and node groups placed on Ray,
sharded data channels, and SM-capped weight broadcasts (see docs/cluster.md).

Ray is optional (``pip install 'fleetrl[cluster]'``) and imported only where
actors are made; config, placement checks and weight sync work without it.
"""
