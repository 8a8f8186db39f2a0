"""Federation on Flower's Message API: thin Flower handlers over plain, typed silo/coordinator logic."""
