"""Integrations with frameworks. Each sits on top of the pool: nothing in `pool` imports them."""
