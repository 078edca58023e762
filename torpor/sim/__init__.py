"""The simulator: torpor's own autoscaler, routing policies and billing on a FakeClock.

``traces`` reads request traces into arrival times and service times; ``engine`` replays one
function's requests through the same :func:`torpor.autoscaling.autoscaler.decide`, the same
:class:`~torpor.gateway.routing_policies.RoutingPolicy` over the gateway's
:class:`~torpor.gateway.route.Endpoint` objects, and the same
:class:`~torpor.autoscaling.metrics.ConcurrencyRecorder` the server uses, with no processes and no
sockets; ``runner`` runs the functions of a trace (what-ifs side by side) and prices the ledger it
wrote with :func:`torpor.metering.billing.bill`, as ``torpor bill`` does; ``report`` prints and plots.
"""
