"""edgemq's base package: cluster config, errors, topic rules, the ring, and the broker process."""
