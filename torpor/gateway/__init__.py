"""The data plane: route requests to instances, queue them while instances start."""
