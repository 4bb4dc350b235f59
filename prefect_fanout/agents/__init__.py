"""Who answers a call: agent profiles, endpoints, agent files, and the one resolver."""
