"""One file per method (config + module), registered in ``registry.py``; the contract is in ``base.py``, shared pieces in ``parts.py``."""
