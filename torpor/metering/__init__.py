"""Metering: instance state intervals from the append-only ledger, priced into bills.

``prices`` holds the price table (active and idle unit prices, as in seed 000); ``billing`` is the pure
core that sums ledger intervals over a window into per-function lines with the always-on comparison of
seed 001. Nothing here reads a clock or does I/O except :func:`torpor.metering.prices.load_prices`.
"""
