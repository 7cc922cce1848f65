"""Foundation: errors, units, the seed tree, result records, timing and YAML loading; imports no other moesim layer."""
