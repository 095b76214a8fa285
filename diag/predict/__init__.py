"""Rules over the statistics: shift verdict, negative transfer, freeze depth, backbone ranking."""
