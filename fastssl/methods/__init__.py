"""One file per method (config + module), registered in ``registry.py``; the contract is in ``output.py``."""
