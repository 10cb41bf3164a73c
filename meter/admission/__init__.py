"""Admission, the per-message path: the batching ``Admitter``, its ``Decision``, the
encoding to and from ``admit.lua`` (``wire``), where each admission goes (``targets``),
refunds, and the reservations (with their ``journal``) that refund a charge whose
message was never forwarded."""
