"""Everything a jurisdiction runs, Flower-free: its policy, state dir, rounds, egress contract and serving.

Nothing here imports `fedrec.coordinator`; what the two sides share travels in messages whose keys and
readers `fedrec.messages` defines. The allow-list of what may leave a silo is `fedrec.silo.egress`.
"""
