"""Who answers a call: agent profiles, agent files, and the one resolver."""
