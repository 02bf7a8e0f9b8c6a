"""The fleet: what gateway instances share through Redis (the L2 tier, generations, the purge
stream, fill leases). Every part fails open: with Redis away, an instance runs on its L1."""
