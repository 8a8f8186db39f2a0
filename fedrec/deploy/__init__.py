"""Running fedrec on Flower's deployment engine: certificates, keys, and a local multi-jurisdiction federation."""
