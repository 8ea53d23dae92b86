"""Governance: forgetting a customer (the right to erasure) and the keyed pseudonyms it uses."""
