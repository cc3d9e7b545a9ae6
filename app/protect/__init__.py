"""Active defence (``dfshield protect``): perturb a face photo before it is shared so that
face-manipulation models distort it (stage 1, interruption) and the attacker's face detector
misses it (stage 2, poisoning), after the TSDF and AntiPure papers."""
