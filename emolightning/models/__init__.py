"""The networks and what trains them: encoders, heads, losses, the classifier and the distiller."""
