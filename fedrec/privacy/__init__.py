"""Differential privacy for silos: accounting (dp-accounting) and each silo's persisted budget ledger."""
