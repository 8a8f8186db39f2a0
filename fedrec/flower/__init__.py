"""Thin adapters between Flower and fedrec: the ClientApp, the ServerApp and the simulation entry point."""
