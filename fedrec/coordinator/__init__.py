"""Everything the coordinator runs: the round loop, the update screen, strategies, preflight, checkpoints.

Nothing here imports `fedrec.silo`: the coordinator only ever sees the silos' replies, read with
`fedrec.messages`.
"""
